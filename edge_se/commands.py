"""The foundation's subcommands: ``models`` and ``info``."""

from __future__ import annotations

import argparse
import json

from edge_se.accounting import Accounting, count
from edge_se.argtypes import number
from edge_se.errors import EdgeSeError
from edge_se.registry import check_resolution, get_spec, list_models


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``models`` and ``info`` to the ``edge-se`` parser."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("models", help="list every registered model name, one per line", formatter_class=fmt)
    p.add_argument("--no-twins", action="store_true", help="leave out the no-SE twins (NAME_nose)")
    p.set_defaults(func=run_models)

    p = sub.add_parser("info", help="parameters and MACs of a model, with the SE share of each", formatter_class=fmt)
    p.add_argument("model", help="registry name, e.g. efficientnet_b0, efficientnet_phi1.5, resnet50_nose")
    p.add_argument(
        "--resolution",
        type=number("--resolution", int, minimum=None),
        default=None,
        help="input side in pixels (default: the model's own)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--layers", action="store_true", help="also print the per-layer table")
    p.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="check that a local state dict (edge-se, torchvision or timm naming) loads strictly",
    )
    p.set_defaults(func=run_info)


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


__all__ = ["EdgeSeError", "format_info", "format_layers", "info", "register", "run_info", "run_models"]
