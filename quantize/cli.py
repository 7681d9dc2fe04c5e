"""``edge-se quantize`` (``edge-se train`` is the foundation's: :mod:`edge_se.commands`).

    edge-se quantize MODEL [--policy NAME[,NAME]] [--engine torchao|nncf] [--format pte|tflite]
                     [--calib digits|DIR|random] [--calib-size N] [--weights FILE] [--resolution R] --out FILE

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
    from quantize.policies import DEFAULT_INT8_REWRITES, DEFAULT_POLICY, ENGINES, POLICIES

    p = parser.add_argument("--policy", default=",".join(DEFAULT_POLICY), metavar="NAME[,NAME]",
                            help=f"int8 quantisation policy{applies}, from: {', '.join(POLICIES)}")
    e = parser.add_argument("--engine", choices=ENGINES, default=ENGINES[0], help="PT2E quantisation engine")
    r = parser.add_argument(
        "--int8-rewrites", default=DEFAULT_INT8_REWRITES, metavar="default|none|NAME[,NAME]",
        help="int8 graph rewrites that keep activations and SE gates in int8 (quantize.int8_ops); "
        "none: the stock quantizer and partitioner")
    return p, e, r


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``quantize`` to the ``edge-se`` parser."""
    p = sub.add_parser("quantize", help="int8-quantise a model with a named policy and report its fidelity",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="registry name, e.g. mobilenetv3_small_100")
    add_quantization(p)
    add_format(p, old="--target")
    add_calibration(p)
    p.add_argument("--eval-size", type=number("--eval-size"), default=DEFAULT_EVAL_SIZE, metavar="N",
                   help="held-out images evaluated")
    add_model_source(p, weights="without: random weights, BatchNorm statistics re-estimated on the calibration "
                     "images", resolution_note=f"the weights' sidecar, else {DEFAULT_RESOLUTION}")
    add_seed(p, seeds="the calibration subset")
    add_threads(p)
    p.add_argument("--out", required=True, metavar="FILE", help="quantised program to write (torch.export .pt2)")
    p.set_defaults(func=run_quantize)


def run_quantize(args: argparse.Namespace) -> int:
    """Quantise, evaluate against float on held-out images, save, print one JSON line."""
    import torch

    from contract.files import write_bytes
    from edge_se.data import load_images
    from edge_se.registry import get_spec
    from edge_se.train import load_float_model, read_sidecar, recalibrate_bn, sidecar_path
    from quantize.calibration import load_calibration
    from quantize.core import quantize_model
    from quantize.evaluate import evaluate
    from quantize.int8_ops import check_flag
    from quantize.policies import resolve_policy

    torch.set_num_threads(args.threads)
    get_spec(args.model)
    resolve_policy(args.policy)  # an unknown policy fails before any work
    check_flag(args.int8_rewrites, args.format)
    if args.calib_size < 1:  # the parser's type already refuses it; callers of run_quantize may not use it
        raise EdgeSeError(f"bad --calib-size {args.calib_size}: need at least 1 calibration image")
    resolution = args.resolution or (int(read_sidecar(args.weights)["resolution"])
                                     if args.weights and sidecar_path(args.weights).exists() else DEFAULT_RESOLUTION)
    cal = load_calibration(args.calib, resolution, samples=args.calib_size, seed=args.seed)  # the one loader
    pool = cal.pool
    if cal.held_out is not None:
        images, labels = cal.held_out[: args.eval_size], cal.held_out_labels
        labels = labels[: args.eval_size] if labels is not None else None
    else:  # random: seeded noise never calibrated on (figures say nothing about accuracy)
        images, labels = load_images("random", resolution, seed=args.seed + 1).images[: args.eval_size], None
    model, _ = load_float_model(args.model, args.weights, num_classes=len(cal.classes) or 10)
    if args.weights is None:
        _log("quantize: no --weights: random weights, BatchNorm statistics re-estimated on the calibration "
             "images; figures say nothing about a trained network")
        recalibrate_bn(model, pool[:256])
        model.eval()
    start = time.perf_counter()
    qm = quantize_model(model, (pool[:1],), cal.batches, target=args.format, policy=args.policy,
                        engine=args.engine, seed=args.seed, calib_size=cal.size, calib_source=cal.source,
                        rewrites=args.int8_rewrites)
    seconds = time.perf_counter() - start
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
        "rewrites": qm.rewrites, "auto_steps": qm.steps,
        "quantize_seconds": round(seconds, 2), "out": str(args.out), **figures,
    }
    print(json.dumps(record))
    return 0
