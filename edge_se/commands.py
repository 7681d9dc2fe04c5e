"""The foundation's subcommands: ``models``, ``info`` and ``train``.

    edge-se train MODEL [--data digits|textures|DIR] [--epochs N] [--resolution R] [--weights FILE] [--lr LR]
                  [--seed N] [--threads N] --out FILE

``train`` prints one JSON line on stdout; logs go to stderr. Heavy imports (torch) happen inside
the run functions so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys

from edge_se.accounting import Accounting, count
from edge_se.argtypes import number
from edge_se.cliargs import DEFAULT_RESOLUTION, add_model_source, add_seed, add_threads
from edge_se.errors import EdgeSeError
from edge_se.init import DEFAULT_INIT, LINEAR_INITS
from edge_se.registry import check_resolution, get_spec, list_models


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``models``, ``info`` and ``train`` to the ``edge-se`` parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("models", help="list every registered model name, one per line", formatter_class=fmt)
    p.add_argument("--no-twins", action="store_true", help="leave out the no-SE twins (NAME_nose)")
    p.set_defaults(func=run_models)

    p = sub.add_parser("info", help="parameters and MACs of a model, with the SE share of each", formatter_class=fmt)
    p.add_argument("model", help="registry name, e.g. efficientnet_b0, efficientnet_phi1.5, resnet50_nose")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--layers", action="store_true", help="also print the per-layer table")
    add_model_source(p, weights="check that it loads strictly into MODEL")
    p.set_defaults(func=run_info)

    p = sub.add_parser("train", help="train or fine-tune a model on the CPU (digits, textures or an image folder)",
                       formatter_class=fmt)
    p.add_argument("model", help="registry name, e.g. mobilenetv3_small_100")
    p.add_argument("--data", default="digits", metavar="digits|textures|DIR",
                   help="digits (scikit-learn's, bundled), textures (the harder task: patches of the photographs "
                   "scikit-image ships, edge_se.textures), or a folder of class sub-folders of images")
    p.add_argument("--epochs", type=number("--epochs"), default=15, metavar="N", help="passes over the training split")
    add_model_source(p, weights="start from these weights (fine-tune); without: random, the recipe's init",
                     resolution=DEFAULT_RESOLUTION)
    p.add_argument("--lr", type=number("--lr", float, minimum=None), default=None,
                   help="peak learning rate (default: the recipe's)")
    p.add_argument("--init", choices=tuple(LINEAR_INITS), default=DEFAULT_INIT,
                   help="Linear-layer initialisation of a from-scratch run (recorded in the sidecar): recipe "
                   "normal(0, 0.01); torch-default nn.Linear's own; efficientnet-uniform U(+-1/sqrt(out)), the "
                   "TF EfficientNet rule. int8 fidelity depends on it (results/quant_bench.md)")
    add_seed(p, seeds="initialisation, shuffling and augmentation")
    add_threads(p)
    p.add_argument("--out", required=True, metavar="FILE", help="weights file to write (plus FILE.json)")
    p.set_defaults(func=run_train)


def run_models(args: argparse.Namespace) -> int:
    """Print the registry, one name per line."""
    for name in list_models(twins=not args.no_twins):
        print(name)
    return 0


def info(model: str, resolution: int | None = None) -> Accounting:
    """Accounting for a registered model at ``resolution`` (default: its own)."""
    spec = get_spec(model)
    return count(spec, check_resolution(resolution) if resolution is not None else None)


def run_info(args: argparse.Namespace) -> int:
    """Print a model's parameters and MACs with the SE share."""
    acc = info(args.model, args.resolution)
    spec = get_spec(args.model)
    summary = acc.summary() | {"default_resolution": spec.resolution, "family": spec.family}
    if args.weights is not None:
        from edge_se.weights import detect_source, load_weights, read_state_dict

        model = load_weights(args.model, args.weights)
        summary["weights"] = {
            "path": args.weights,
            "source": detect_source(read_state_dict(args.weights)),
            "num_classes": model.spec.num_classes,
            "bn_eps": model.spec.bn_eps,
        }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(format_info(acc, spec.resolution))
    if args.weights is not None:
        w = summary["weights"]
        print(f"  weights    {w['path']} ({w['source']} naming, {w['num_classes']} classes): loaded strictly")  # type: ignore[index]
    if args.layers:
        print(format_layers(acc))
    return 0


def format_info(acc: Accounting, default_resolution: int) -> str:
    """A short human table of totals and the SE share."""
    lines = [
        f"{acc.name} @ {acc.resolution}x{acc.resolution} (default {default_resolution})",
        f"  params     {acc.params:>14,}   SE {acc.se_params:>12,}  ({100 * acc.se_params / acc.params:5.2f}%)",
        f"  MACs       {acc.macs:>14,}   SE {acc.se_macs:>12,}  ({100 * acc.se_macs / acc.macs:5.2f}%)",
        f"  other ops  {acc.ops:>14,}   SE {acc.se_ops:>12,}  (squeeze, gate, scale)",
        f"  SE blocks  {acc.se_blocks}",
    ]
    return "\n".join(lines)


def format_layers(acc: Accounting) -> str:
    """The per-layer table (one line per layer, SE rows marked)."""
    out = [f"{'layer':<28} {'kind':<7} {'out (C,H,W)':<18} {'params':>10} {'MACs':>13} {'ops':>11} SE"]
    for r in acc.rows:
        shape = "x".join(str(v) for v in r.out_shape)
        out.append(
            f"{r.name:<28} {r.kind:<7} {shape:<18} {r.params:>10,} {r.macs:>13,} {r.ops:>11,} {'*' if r.se else ''}"
        )
    return "\n".join(out)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_train(args: argparse.Namespace) -> int:
    """Train, save the weights and sidecar, print one JSON line."""
    import torch

    from edge_se.data import load_images
    from edge_se.train import LR, init_linear_layers, load_float_model, save_weights, train

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    get_spec(args.model)  # a bad name fails before any data is read
    train_data = load_images(args.data, args.resolution, split="train", seed=args.seed)
    test_data = load_images(args.data, args.resolution, split="test", seed=args.seed)
    model, _ = load_float_model(args.model, args.weights, num_classes=len(train_data.classes))
    if not args.weights:  # from scratch: the chosen Linear init (edge_se.init), recorded
        init_linear_layers(model, args.init)
    init = {"from": args.weights} if args.weights else {"linear": args.init, "seed": args.seed}
    _log(json.dumps({"train": args.model, "data": train_data.source, "images": len(train_data),
                     "held_out": len(test_data), "resolution": args.resolution, "epochs": args.epochs,
                     "threads": args.threads, "init": init}))
    result = train(model, train_data, epochs=args.epochs, eval_data=test_data, lr=args.lr or LR,
                   seed=args.seed, log=_log)
    extra = {"accuracy": result.accuracy, "train_accuracy": result.train_accuracy, "epochs": result.epochs,
             "data": train_data.source, "classes": train_data.classes, "seconds": round(result.seconds, 1),
             "threads": args.threads, "init": init, "lr": args.lr or LR}
    save_weights(args.out, model, model_name=args.model, num_classes=len(train_data.classes),
                 resolution=args.resolution, extra=extra)
    print(json.dumps({"model": args.model, "out": str(args.out), "sidecar": f"{args.out}.json", **extra}))
    return 0


__all__ = ["EdgeSeError", "format_info", "format_layers", "info", "register", "run_info", "run_models", "run_train"]
