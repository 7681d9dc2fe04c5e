"""The ``export`` and ``verify`` subcommands (one JSON line per artifact on stdout, logs on stderr).

``edge-se export MODEL --out DIR [--format pte|tflite|all] [--dtype fp32|int8|all] [--resolution R]
[--weights FILE] [--calib digits|DIR|random] [--calib-size N] [--policy NAME[,NAME]]
[--engine torchao|nncf] [--int8-rewrites default|none|NAME[,NAME]] [--channels-last] [--no-check]
[--gate-outputs [--gate-stats STATS.json]]``

The shared flags come from :mod:`edge_se.cliargs`, with the same names and defaults as
``edge-se quantize``; ``--calib-samples`` is the deprecated spelling of ``--calib-size``.

``edge-se verify ARTIFACT``: exit 0 when the artifact still matches its manifest and reference.
Exit codes: 0 all good, 1 a parity check failed (figures printed), 2 bad input (one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from contract.formats import GATE_LAYOUTS
from edge_se.cliargs import (
    add_calibration,
    add_format,
    add_model_source,
    add_seed,
)
from export import backends
from quantize.cli import add_quantization
from quantize.policies import DEFAULT_LATENCY_BUDGET_PCT

FORMAT_CHOICES = (*backends.names(), "all")  # one backend module per format (export/backends), listed unimported
DTYPE_CHOICES = ("fp32", "int8", "all")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``export`` and ``verify`` to the ``edge-se`` parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "export",
        formatter_class=fmt,
        help="write verified .pte (ExecuTorch/XNNPACK) and .tflite (LiteRT) artifacts with manifests",
    )
    p.add_argument("model", help="registry name, e.g. efficientnet_b0 (see `edge-se models`)")
    add_format(p, choices=FORMAT_CHOICES, allow_all=True)
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32", help="fp32, int8 (PT2E) or both")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_model_source(
        p, weights="without: random weights with BatchNorm statistics re-estimated on the calibration images"
    )
    add_calibration(p, uses="; real images also join the parity inputs")
    add_quantization(p, applies=" (--dtype int8)")
    p.add_argument("--latency-budget-pct", type=float, default=None, metavar="P",
                   help="with --policy auto: keep an fp32 island only if the artifact runs within P%% of plain int8's "
                   "latency, both timed side by side in the target's runtime (export.latency_probe; "
                   f"default {DEFAULT_LATENCY_BUDGET_PCT:g})")
    for flag, default, text in (
        ("--channels-last", False, "NHWC input for .tflite (recorded in the manifest; .pte stays NCHW)"),
        ("--check", True, "run each artifact in its runtime and compare with PyTorch before writing it"),
        ("--gate-outputs", False, "also output every SE block's gate vector after the logits (manifest gate_outputs)"),
    ):
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
    p.add_argument(
        "--gate-stats",
        default=None,
        metavar="STATS.json",
        help="gate statistics (edge-se/gate-stats/1) to record in the manifest for the on-device score; "
             "implies --gate-outputs",
    )
    p.add_argument(
        "--gate-fit",
        default=None,
        metavar="DATA",
        help="fit the gate statistics on each artifact's own gate outputs, run in its runtime over DATA's "
             "training split (digits, textures or a folder), and record them in its manifest; implies "
             "--gate-outputs; excludes --gate-stats",
    )
    p.add_argument(
        "--gate-layout",
        choices=GATE_LAYOUTS,
        default=GATE_LAYOUTS[0],
        help="concat: every SE gate in one output after the logits (one extra output); separate: one output "
             "per SE block; quantized: one output per SE block, the int8 gate itself in an int8 .pte (no dequantize; "
             "the manifest gives each output's scale and zero point)",
    )
    add_seed(p, seeds="random weights, inputs and calibration")
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


def _read_gate_stats(path: str | None) -> dict[str, Any] | None:
    """The ``--gate-stats`` file as a dict (one-line error naming the file when unreadable)."""
    from edge_se.errors import EdgeSeError

    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise EdgeSeError(f"--gate-stats {path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeSeError(f"--gate-stats {path}: not a JSON file ({exc})") from None
    if not isinstance(doc, dict):
        raise EdgeSeError(f"--gate-stats {path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _check_gates(model: Any, name: str, resolution: int, stats: dict[str, Any] | None, path: str | None) -> None:
    """Fail before any artifact work when the model has no SE block or the stats do not fit its blocks."""
    import torch

    from export import gate_outputs as go

    gm = torch.export.export(model.eval(), (torch.zeros(1, 3, resolution, resolution),)).module()
    blocks = go.se_blocks(gm, model_name=name)
    if stats is not None:
        go.check_stats(stats, blocks, where=str(path))


def _check_gate_fit(source: str | None, stats_file: str | None) -> None:
    """One-line errors for ``--gate-fit`` before any work: with ``--gate-stats``, or not an image source."""
    from pathlib import Path

    from edge_se.data import LABELLED_SOURCES
    from edge_se.errors import EdgeSeError

    if source is None:
        return
    if stats_file is not None:
        raise EdgeSeError("--gate-fit and --gate-stats both given: fit on the artifact, or record a fitted file")
    if source not in LABELLED_SOURCES and not Path(source).is_dir():
        raise EdgeSeError(f"--gate-fit {source!r}: not a data source; valid: {', '.join(LABELLED_SOURCES)} or a "
                          "folder of class sub-folders (the training split of in-distribution images)")


def run_export(args: argparse.Namespace) -> int:
    """Export ``args.model`` in each requested format and dtype; print one JSON line per artifact."""
    from edge_se.registry import check_resolution, get_spec
    from export.pipeline import ExportOptions, ParityFailure, export_one
    from export.sources import load_calibration, prepare_model
    from quantize.int8_ops import check_flag
    from quantize.policies import check_latency_budget, float_layers_for, parse_policy

    spec = get_spec(args.model)  # validates the name before anything heavy
    resolution = check_resolution(args.resolution if args.resolution is not None else spec.resolution)
    formats = _expand(args.format, backends.names())
    dtypes = _expand(args.dtype, ("fp32", "int8"))
    policy = parse_policy(args.policy)  # an unknown name fails before any work
    _check_gate_fit(args.gate_fit, args.gate_stats)
    gate_stats = _read_gate_stats(args.gate_stats)
    gate_outputs = bool(args.gate_outputs or gate_stats is not None or args.gate_fit is not None)
    opts = ExportOptions(
        resolution=resolution,
        check=args.check,
        channels_last=args.channels_last,
        policy=policy,
        engine=args.engine,
        seed=args.seed,
        int8_rewrites=check_flag(args.int8_rewrites),
        float_prefix=args.float_prefix,
        float_layers=float_layers_for(policy, args.float_layers),
        latency_budget_pct=check_latency_budget(policy, args.latency_budget_pct),
        gate_outputs=gate_outputs,
        gate_stats=gate_stats,
        gate_stats_file=args.gate_stats,
        gate_layout=args.gate_layout,
        gate_fit=args.gate_fit,
    )
    print(
        f"edge-se export: {args.model} @ {resolution}px formats={formats} dtypes={dtypes} out={args.out} "
        f"calib={args.calib} policy={list(policy)} engine={args.engine} check={args.check} "
        f"gate_outputs={gate_outputs} gate_stats={args.gate_stats} gate_fit={args.gate_fit}",
        file=sys.stderr,
    )
    if args.calib == "random" and "int8" in dtypes:
        print(
            "edge-se export: warning: calibrating on random images; pass --calib digits|DIR for real ranges",
            file=sys.stderr,
        )
    calib = load_calibration(args.calib, resolution, samples=args.calib_size, seed=args.seed)
    model, weights = prepare_model(args.model, weights=args.weights, calib=calib, resolution=resolution, seed=args.seed)
    if gate_outputs:
        _check_gates(model, args.model, resolution, gate_stats, args.gate_stats)
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
    failed = 0
    if not result["parity"]["passed"]:
        print(f"edge-se verify: error: {args.artifact}: parity check failed", file=sys.stderr)
        failed = 1
    if result.get("fidelity") and not result["fidelity"]["passed"]:
        print(f"edge-se verify: error: {args.artifact}: re-measured fidelity differs from the manifest's "
              f"({result['fidelity']['abs_diff']})", file=sys.stderr)
        failed = 1
    return failed
