"""``edge-se quantize`` and ``edge-se train`` (training logic lives in :mod:`edge_se.train`).

    edge-se train MODEL --data digits|DIR --epochs N [--resolution R] [--weights FILE] --out FILE
    edge-se quantize MODEL --policy NAME[,NAME] --engine torchao|nncf --target pte|tflite
                     --calib digits|DIR|random --calib-size N [--weights FILE] [--resolution R] --out FILE

Each prints one JSON line on stdout; logs go to stderr. Heavy imports happen inside the run
functions so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

from edge_se.errors import EdgeSeError

# One intra-op thread by default: on a 2-core machine shared with other jobs, two PyTorch
# threads per process were measured 7-15x slower per training step than one (oversubscription).
DEFAULT_THREADS = 1
DEFAULT_RESOLUTION = 64  # pixels: the digits data are 8x8, 64 keeps every family's stages meaningful


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _positive(flag: str):  # noqa: ANN202 - argparse type callable
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1, got {value}")
        return value

    return parse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``train`` and ``quantize`` to the ``edge-se`` parser."""
    from contract.formats import FORMATS  # the quantiser targets are the artifact formats
    from quantize.policies import DEFAULT_POLICY, ENGINES, POLICIES

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("train", help="train or fine-tune a model on the CPU (digits or an image folder)",
                       formatter_class=fmt)
    p.add_argument("model", help="registry name, e.g. mobilenetv3_small_100")
    p.add_argument("--data", default="digits", help="digits, or a folder of class sub-folders of images")
    p.add_argument("--epochs", type=_positive("--epochs"), default=15, help="passes over the training split")
    p.add_argument("--resolution", type=_positive("--resolution"), default=DEFAULT_RESOLUTION,
                   help="input side, pixels")
    p.add_argument("--weights", default=None, metavar="FILE", help="start from these weights (fine-tune)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, shuffling and augmentation")
    p.add_argument("--threads", type=_positive("--threads"), default=DEFAULT_THREADS, help="PyTorch intra-op threads")
    p.add_argument("--out", required=True, metavar="FILE", help="weights file to write (plus FILE.json)")
    p.set_defaults(func=run_train)

    p = sub.add_parser("quantize", help="int8-quantise a model with a named policy and report its fidelity",
                       formatter_class=fmt)
    p.add_argument("model", help="registry name, e.g. mobilenetv3_small_100")
    p.add_argument("--policy", default=",".join(DEFAULT_POLICY),
                   help=f"NAME[,NAME] from: {', '.join(POLICIES)}")
    p.add_argument("--engine", choices=ENGINES, default="torchao", help="PT2E engine")
    p.add_argument("--target", choices=tuple(FORMATS), default="pte",
                   help="pte: XNNPACK quantizer; tflite: litert-torch's")
    p.add_argument("--int8-rewrites", default="default", metavar="default|none|NAME[,NAME]",
                   help="graph rewrites that keep activations and SE gates in int8 (quantize.int8_ops)")
    p.add_argument("--calib", default="digits", help="calibration data: digits, a folder, or random (smoke tests)")
    p.add_argument("--calib-size", type=int, default=64, help="images drawn from the training split to calibrate")
    p.add_argument("--eval-size", type=_positive("--eval-size"), default=360, help="held-out images evaluated")
    p.add_argument("--weights", default=None, metavar="FILE", help="trained weights (edge-se train output)")
    p.add_argument("--resolution", type=_positive("--resolution"), default=None,
                   help="input side in pixels (default: the weights' sidecar, else 64)")
    p.add_argument("--seed", type=int, default=0, help="seeds the calibration subset")
    p.add_argument("--threads", type=_positive("--threads"), default=DEFAULT_THREADS, help="PyTorch intra-op threads")
    p.add_argument("--out", required=True, metavar="FILE", help="quantised program to write (torch.export .pt2)")
    p.set_defaults(func=run_quantize)


def load_float_model(name: str, weights: str | None, *, num_classes: int):  # noqa: ANN201
    """The float model ``name``: from ``weights`` (edge-se sidecar or the registry's loader) or random.

    Returns:
        (model in eval mode, sidecar dict or {}).

    Raises:
        EdgeSeError: a malformed weights file, or one saved for another model.
    """
    from edge_se.registry import build_model
    from edge_se.train import load_model, sidecar_path

    if weights is None:
        return build_model(name, num_classes=num_classes).eval(), {}
    if sidecar_path(weights).exists():
        model, meta = load_model(weights)
        if meta["model"] != name:
            raise EdgeSeError(f"weights file {weights} was saved for {meta['model']!r}, not {name!r}")
        return model, meta
    from edge_se.weights import load_weights  # torchvision / timm / edge-se state dicts without a sidecar

    return load_weights(name, weights).eval(), {}


def run_train(args: argparse.Namespace) -> int:
    """Train, save the weights and sidecar, print one JSON line."""
    import torch

    from edge_se.data import load_images
    from edge_se.registry import get_spec
    from edge_se.train import LR, init_linear_layers, save_weights, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    get_spec(args.model)  # a bad name fails before any data is read
    train_data = load_images(args.data, args.resolution, split="train", seed=args.seed)
    test_data = load_images(args.data, args.resolution, split="test", seed=args.seed)
    model, meta = load_float_model(args.model, args.weights, num_classes=len(train_data.classes))
    if not args.weights:  # from scratch: the recipe's Linear init (see edge_se.train)
        init_linear_layers(model)
    _log(json.dumps({"train": args.model, "data": train_data.source, "images": len(train_data),
                     "held_out": len(test_data), "resolution": args.resolution, "epochs": args.epochs,
                     "threads": args.threads, "init": args.weights or "random"}))
    result = train(model, train_data, epochs=args.epochs, eval_data=test_data, lr=args.lr or LR,
                   seed=args.seed, log=_log)
    extra = {"accuracy": result.accuracy, "train_accuracy": result.train_accuracy, "epochs": result.epochs,
             "data": train_data.source, "classes": train_data.classes, "seconds": round(result.seconds, 1),
             "threads": args.threads, "init": args.weights or "random, Linear normal(0, 0.01)"}
    save_weights(args.out, model, model_name=args.model, num_classes=len(train_data.classes),
                 resolution=args.resolution, extra=extra)
    print(json.dumps({"model": args.model, "out": str(args.out), "sidecar": f"{args.out}.json", **extra}))
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    """Quantise, evaluate against float on held-out images, save, print one JSON line."""
    import torch

    from contract.files import write_bytes
    from edge_se.data import load_images
    from edge_se.registry import get_spec
    from edge_se.train import read_sidecar, recalibrate_bn
    from quantize.core import quantize_model
    from quantize.evaluate import evaluate
    from quantize.int8_ops import check_flag
    from quantize.policies import resolve_policy

    torch.set_num_threads(args.threads)
    get_spec(args.model)
    resolve_policy(args.policy)  # an unknown policy fails before any work
    check_flag(args.int8_rewrites, args.target)
    if args.calib_size < 1:
        raise EdgeSeError(f"bad --calib-size {args.calib_size}: need at least 1 calibration image")
    resolution = args.resolution or (int(read_sidecar(args.weights)["resolution"])
                                     if args.weights and Path(f"{args.weights}.json").exists() else DEFAULT_RESOLUTION)
    calib = load_images(args.calib, resolution, split="train", seed=args.seed)
    held = load_images(args.calib, resolution, split="test", seed=args.seed + 1)
    num_classes = len(calib.classes) or 10
    model, meta = load_float_model(args.model, args.weights, num_classes=num_classes)
    if args.weights is None:
        _log("quantize: no --weights: random weights, BatchNorm statistics re-estimated on the calibration "
             "images; figures say nothing about a trained network")
        recalibrate_bn(model, calib.images[:256])
        model.eval()
    start = time.perf_counter()
    qm = quantize_model(model, (calib.images[:1],), [calib.images], target=args.target, policy=args.policy,
                        engine=args.engine, seed=args.seed, calib_size=args.calib_size, calib_source=calib.source,
                        rewrites=args.int8_rewrites)
    seconds = time.perf_counter() - start
    images = held.images[: args.eval_size]
    labels = held.labels[: args.eval_size] if held.labels is not None else None
    figures = evaluate(qm, images, labels)
    buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer; the write stays atomic
    torch.export.save(torch.export.export(qm.graph, (images[:1],)), buffer)
    write_bytes(args.out, buffer.getvalue())
    record = {
        "model": args.model, "target": args.target, "engine": args.engine, "policy": list(qm.policy),
        "resolution": resolution, "weights": args.weights, "calibration": qm.calibration,
        "eval": {"source": held.source, "split": "test", "images": int(images.shape[0])},
        "se_blocks": [b.name for b in qm.se_blocks], "int8_rewrites": list(qm.int8_rewrites),
        "rewrites": qm.rewrites, "auto_steps": qm.steps,
        "quantize_seconds": round(seconds, 2), "out": str(args.out), **figures,
    }
    print(json.dumps(record))
    return 0
