"""The ``export`` and ``verify`` subcommands (one JSON line per artifact on stdout, logs on stderr).

``edge-se export MODEL --format pte|tflite|all --dtype fp32|int8|all --out DIR [--resolution R]
[--weights FILE] [--calib random|digits|DIR] [--policy NAME[,NAME]] [--engine torchao|nncf]
[--int8-rewrites default|none|NAME[,NAME]] [--channels-last] [--no-check]``

``edge-se verify ARTIFACT``: exit 0 when the artifact still matches its manifest and reference.
Exit codes: 0 all good, 1 a parity check failed (figures printed), 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge_se.argtypes import number

FORMAT_CHOICES = ("pte", "tflite", "all")
DTYPE_CHOICES = ("fp32", "int8", "all")
ENGINE_CHOICES = ("torchao", "nncf")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``export`` and ``verify`` to the ``edge-se`` parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "export",
        formatter_class=fmt,
        help="write verified .pte (ExecuTorch/XNNPACK) and .tflite (LiteRT) artifacts with manifests",
    )
    p.add_argument("model", help="registry name, e.g. efficientnet_b0 (see `edge-se models`)")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="all", help="artifact format(s)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32", help="fp32, int8 (PT2E) or both")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument(
        "--resolution",
        type=number("--resolution"),
        default=None,
        help="input side in pixels (default: the model's own)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="state dict file (edge-se/torchvision/timm naming); "
        "default: random weights with BatchNorm statistics re-estimated on the calibration images",
    )
    p.add_argument(
        "--calib",
        default="random",
        help="calibration images: random, digits (scikit-learn) or an image folder; real images "
        "also join the parity inputs",
    )
    p.add_argument("--calib-samples", type=number("--calib-samples"), default=64, help="calibration images used")
    p.add_argument("--policy", default="ptq", help="int8 quantisation policy NAME[,NAME] (see quantize)")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="torchao", help="int8 quantisation engine")
    p.add_argument(
        "--int8-rewrites",
        default="default",
        metavar="default|none|NAME[,NAME]",
        help="int8 graph rewrites that keep activations and SE gates in int8 (quantize.int8_ops); "
        "none: the stock quantizer and partitioner",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="NHWC input for .tflite (recorded in the manifest; .pte stays NCHW)",
    )
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each artifact in its runtime and compare with PyTorch before writing it",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random weights, inputs and calibration")
    p.set_defaults(func=run_export)

    v = sub.add_parser(
        "verify", formatter_class=fmt, help="re-check an artifact against its manifest: sha256, I/O shapes, parity"
    )
    v.add_argument("artifact", help="a .pte or .tflite written by `edge-se export` (manifest beside it)")
    v.set_defaults(func=run_verify)


def _expand(choice: str, every: tuple[str, ...]) -> list[str]:
    return list(every) if choice == "all" else [choice]


def _print(record: dict[str, Any]) -> None:
    print(json.dumps(record, default=str), flush=True)


def run_export(args: argparse.Namespace) -> int:
    """Export ``args.model`` in each requested format and dtype; print one JSON line per artifact."""
    from edge_se.registry import check_resolution, get_spec
    from export.pipeline import ExportOptions, ParityFailure, export_one
    from export.sources import load_calibration, prepare_model
    from quantize.int8_ops import check_flag

    spec = get_spec(args.model)  # validates the name before anything heavy
    resolution = check_resolution(args.resolution if args.resolution is not None else spec.resolution)
    formats = _expand(args.format, ("pte", "tflite"))
    dtypes = _expand(args.dtype, ("fp32", "int8"))
    policy = tuple(p.strip() for p in args.policy.split(",") if p.strip()) or ("ptq",)
    opts = ExportOptions(
        resolution=resolution,
        check=args.check,
        channels_last=args.channels_last,
        policy=policy,
        engine=args.engine,
        seed=args.seed,
        int8_rewrites=check_flag(args.int8_rewrites),
    )
    print(
        f"edge-se export: {args.model} @ {resolution}px formats={formats} dtypes={dtypes} out={args.out} "
        f"calib={args.calib} policy={list(policy)} engine={args.engine} check={args.check}",
        file=sys.stderr,
    )
    if args.calib == "random" and "int8" in dtypes:
        print(
            "edge-se export: warning: calibrating on random images; pass --calib digits|DIR for real ranges",
            file=sys.stderr,
        )
    calib = load_calibration(args.calib, resolution, samples=args.calib_samples, seed=args.seed)
    model, weights = prepare_model(args.model, weights=args.weights, calib=calib, resolution=resolution, seed=args.seed)
    failed = 0
    for dtype in dtypes:
        for fmt in formats:
            try:
                record = export_one(
                    model,
                    name=args.model,
                    fmt=fmt,
                    dtype=dtype,
                    out_dir=args.out,
                    opts=opts,
                    calib=calib,
                    weights=weights,
                )
            except ParityFailure as exc:
                _print(exc.record)
                print(f"edge-se export: error: {exc}", file=sys.stderr)
                failed += 1
                continue
            _print(record)
    return 1 if failed else 0


def run_verify(args: argparse.Namespace) -> int:
    """Verify one artifact; print its figures as one JSON line; exit 1 when parity no longer holds."""
    from export.verify import verify_artifact

    result = verify_artifact(args.artifact)
    _print(result)
    if not result["parity"]["passed"]:
        print(f"edge-se verify: error: {args.artifact}: parity check failed", file=sys.stderr)
        return 1
    return 0
