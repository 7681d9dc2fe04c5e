"""``edge-se quantize`` (``edge-se train`` is the foundation's: :mod:`edge_se.commands`).

    edge-se quantize MODEL [--policy NAME[,NAME]] [--engine torchao|nncf] [--format pte|tflite]
                     [--calib digits|DIR|random] [--calib-size N] [--weights FILE] [--resolution R] --out FILE
    edge-se diagnose MODEL [--weights FILE] [--format pte|tflite] [--calib ...] [--calib-size N]
                     [--policy NAME] [--eval-size N] [--top K] [--plot FILE] [--json]

The flags are the shared vocabulary (:mod:`edge_se.cliargs`): the same names and defaults as
``edge-se export``; ``--target`` is the deprecated spelling of ``--format``. Prints one JSON line
on stdout; logs go to stderr. Heavy imports happen inside the run function so that building the
parser stays cheap.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from edge_se.argtypes import number
from edge_se.cliargs import (
    DEFAULT_RESOLUTION,
    add_calibration,
    add_format,
    add_model_source,
    add_seed,
    add_threads,
)
from edge_se.errors import EdgeSeError

DEFAULT_EVAL_SIZE = 360  # held-out digits images evaluated (the digits test split holds 360)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_quantization(parser: Any, *, applies: str = "") -> tuple[argparse.Action, ...]:
    """``--policy NAME[,NAME]``, ``--engine`` and ``--int8-rewrites``, with one default each.

    Here, not in :mod:`edge_se.cliargs`: the policy table is this layer's (``export.cli`` takes it
    from here). ``quantize.policies`` is data only (no torch), so building the parser stays cheap.
    """
    from quantize.policies import DEFAULT_FLOAT_LAYERS, DEFAULT_INT8_REWRITES, DEFAULT_POLICY, ENGINES, POLICIES

    p = parser.add_argument("--policy", default=",".join(DEFAULT_POLICY), metavar="NAME[,NAME]",
                            help=f"int8 quantisation policy{applies}, from: {', '.join(POLICIES)}")
    e = parser.add_argument("--engine", choices=ENGINES, default=ENGINES[0], help="PT2E quantisation engine")
    r = parser.add_argument(
        "--int8-rewrites", default=DEFAULT_INT8_REWRITES, metavar="default|none|NAME[,NAME]",
        help="int8 graph rewrites that keep activations and SE gates in int8 (quantize.int8_ops); "
        "none: the stock quantizer and partitioner")
    f = parser.add_argument(
        "--float-prefix", type=number("--float-prefix", int, minimum=0), default=0, metavar="N",
        help="keep the network's first N execution units (stem, blocks.0, ...) fp32 in int8: on CPUs without "
        "int8 dot products their int8 kernels are slower (quantize.float_prefix); 0: none")
    k = parser.add_argument(
        "--float-layers", type=number("--float-layers", int), default=None, metavar="K",
        help="with --policy float-sensitive: how many int8 tensors (lowest isolated SQNR) to keep fp32, with their "
        f"producer and readers (quantize.mixed_precision; default {DEFAULT_FLOAT_LAYERS})")
    return p, e, r, f, k


def _add_quantize_options(p: argparse.ArgumentParser, *, eval_size: int, eval_help: str,
                          old_format: str | None = None) -> None:
    """The options ``quantize`` and ``diagnose`` share: what is quantised, from what, evaluated on what."""
    add_quantization(p)
    add_format(p, old=old_format)
    add_calibration(p)
    p.add_argument("--eval-size", type=number("--eval-size"), default=eval_size, metavar="N", help=eval_help)
    add_model_source(p, weights="without: random weights, BatchNorm statistics re-estimated on the calibration "
                     "images", resolution_note=f"the weights' sidecar, else {DEFAULT_RESOLUTION}")
    add_seed(p, seeds="the calibration subset")
    add_threads(p)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``quantize`` to the ``edge-se`` parser."""
    p = sub.add_parser("quantize", help="int8-quantise a model with a named policy and report its fidelity",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="registry name, e.g. mobilenetv3_small_100")
    _add_quantize_options(p, eval_size=DEFAULT_EVAL_SIZE, eval_help="held-out images evaluated", old_format="--target")
    p.add_argument("--out", required=True, metavar="FILE", help="quantised program to write (torch.export .pt2)")
    p.set_defaults(func=run_quantize)
    register_diagnose(sub)


@dataclass
class _Quantized:
    """What ``quantize`` and ``diagnose`` share: the model quantised under the flags, and held-out images."""

    qm: Any
    cal: Any
    images: Any
    labels: Any
    resolution: int
    seconds: float


def _quantize_from_args(args: argparse.Namespace, command: str) -> _Quantized:
    """Check the flags, load the model and the one calibration pool, quantise; bad input fails before any work."""
    import torch

    from edge_se.data import load_images
    from edge_se.registry import get_spec
    from edge_se.train import load_float_model, read_sidecar, recalibrate_bn, sidecar_path
    from quantize.calibration import load_calibration
    from quantize.core import quantize_model
    from quantize.int8_ops import check_flag
    from quantize.policies import resolve_policy

    torch.set_num_threads(args.threads)
    get_spec(args.model)
    resolve_policy(args.policy)  # an unknown policy fails before any work
    check_flag(args.int8_rewrites, args.format)
    if args.calib_size < 1:  # the parser's type already refuses it; callers of run_* may not use it
        raise EdgeSeError(f"bad --calib-size {args.calib_size}: need at least 1 calibration image")
    resolution = args.resolution or (int(read_sidecar(args.weights)["resolution"])
                                     if args.weights and sidecar_path(args.weights).exists() else DEFAULT_RESOLUTION)
    cal = load_calibration(args.calib, resolution, samples=args.calib_size, seed=args.seed)  # the one loader
    pool = cal.pool
    if cal.held_out is not None:
        images, labels = cal.held_out[: args.eval_size], cal.held_out_labels
        labels = labels[: args.eval_size] if labels is not None else None
    else:  # random: seeded noise never calibrated on (figures say nothing about accuracy)
        images, labels = load_images("random", resolution, seed=args.seed + 1).images[: args.eval_size].float(), None
    model, _ = load_float_model(args.model, args.weights, num_classes=len(cal.classes) or 10)
    if args.weights is None:
        _log(f"{command}: no --weights: random weights, BatchNorm statistics re-estimated on the calibration "
             "images; figures say nothing about a trained network")
        recalibrate_bn(model, pool[:256])
        model.eval()
    start = time.perf_counter()
    qm = quantize_model(model, (pool[:1],), cal.batches, target=args.format, policy=args.policy,
                        engine=args.engine, seed=args.seed, calib_size=cal.size, calib_source=cal.source,
                        rewrites=args.int8_rewrites, float_prefix=args.float_prefix,
                        float_layers=args.float_layers)
    return _Quantized(qm, cal, images, labels, resolution, time.perf_counter() - start)


def run_quantize(args: argparse.Namespace) -> int:
    """Quantise, evaluate against float on held-out images, save, print one JSON line."""
    import torch

    from contract.files import write_bytes
    from quantize.evaluate import evaluate

    q = _quantize_from_args(args, "quantize")
    qm, cal, images, labels, resolution, seconds = q.qm, q.cal, q.images, q.labels, q.resolution, q.seconds
    figures = evaluate(qm, images, labels)
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer; the write stays atomic
    torch.export.save(torch.export.export(qm.graph, (images[:1],)), buffer)
    write_bytes(args.out, buffer.getvalue())
    record = {
        # the record keeps its "target" key (pipeline.report and pipeline.plots read it): the --format value
        "model": args.model, "target": args.format, "engine": args.engine, "policy": list(qm.policy),
        "resolution": resolution, "weights": args.weights, "calibration": qm.calibration,
        "eval": {"source": cal.source, "split": "test", "images": int(images.shape[0])},
        "se_blocks": [b.name for b in qm.se_blocks], "int8_rewrites": list(qm.int8_rewrites),
        "float_prefix": qm.float_prefix, "float_layers": qm.float_layers,
        "equalization": getattr(qm.quantizer, "edge_se_equalized", None),
        "adaround": qm.adaround, "qat": qm.qat, "rewrites": qm.rewrites,
        "auto_steps": qm.steps,
        "quantize_seconds": round(seconds, 2), "out": str(args.out), **figures,
    }
    print(json.dumps(record))
    return 0


DEFAULT_DIAGNOSE_SIZE = 64  # held-out images diagnosed: every quantised activation is kept per batch


def register_diagnose(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``diagnose`` to the ``edge-se`` parser (see :mod:`quantize.diagnose`)."""
    p = sub.add_parser("diagnose", help="where int8 loses fidelity: accumulated and isolated SQNR per quantised layer",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="registry name, e.g. mobilenetv3_small_100")
    _add_quantize_options(p, eval_size=DEFAULT_DIAGNOSE_SIZE, eval_help="held-out images the SQNRs are measured on")
    p.add_argument("--top", type=number("--top"), default=5, metavar="K", help="top offenders named")
    p.add_argument("--plot", default=None, metavar="FILE", help="write a PNG of both SQNRs per layer")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the markdown table")
    p.set_defaults(func=run_diagnose)


def run_diagnose(args: argparse.Namespace) -> int:
    """Quantise, measure both SQNRs per quantised activation on held-out images, print table or JSON."""
    from quantize.diagnose import diagnose, diagnose_table, error_split, plot_fidelity, worst

    q = _quantize_from_args(args, "diagnose")
    qm, cal, images, resolution = q.qm, q.cal, q.images, q.resolution
    start = time.perf_counter()
    layers = diagnose(qm, images)
    split = error_split(qm, images)
    _log(f"diagnose: {len(layers)} quantised activations on {int(images.shape[0])} held-out images "
         f"in {time.perf_counter() - start:.1f} s")
    top = worst(layers, args.top)
    if args.plot:
        plot_fidelity(layers, args.plot, title=f"{args.model} int8 ({args.format}, {','.join(qm.policy)})")
        _log(f"diagnose: plot written to {args.plot}")
    if args.json:
        print(json.dumps({
            "model": args.model, "format": args.format, "policy": list(qm.policy), "engine": args.engine,
            "resolution": resolution, "weights": args.weights,
            "images": {"source": cal.source, "count": int(images.shape[0])},
            "error_split": split.as_dict(),
            "layers": [r.as_dict() for r in layers],
            "worst": [r.as_dict() for r in top],
        }))
        return 0
    print(f"# int8 fidelity per layer: {args.model}, {args.format}, policy {','.join(qm.policy)}, "
          f"{int(images.shape[0])} held-out {cal.source} images\n")
    print(f"Logits SQNR vs float: {split.sqnr_db:.1f} dB int8; {split.sqnr_db_weights_only:.1f} dB with only the "
          f"weights int8; {split.sqnr_db_activations_only:.1f} dB with only the activations int8. "
          f"The loss is in the {split.verdict}.\n")
    print("Top offenders (isolated SQNR ascending: the tensors whose own int8 grid costs most):\n")
    print(diagnose_table(top))
    print("\nAll quantised activations, graph order:\n")
    print(diagnose_table(layers))
    return 0
