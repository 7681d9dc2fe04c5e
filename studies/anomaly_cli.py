"""``edge-se anomaly fit|score``: the SE-gate out-of-distribution score (docs/anomaly.md).

    edge-se anomaly fit MODEL --weights W [--data digits|textures] [--resolution R] [--fpr 0.05]
                        [--components K] [--combine max-z|sum-z] [--seed N] --out STATS.json
    edge-se anomaly score MODEL --weights W --stats STATS.json [--data ...] [--images N] [--seed N] [--json]

``fit`` reads the gate vectors of the training split and writes the stats (``edge-se/gate-stats/1``)
atomically; ``score`` compares the gate score with max-softmax on the held-out split against every
OOD set of :mod:`studies.ood` and prints a table, or one JSON object with ``--json``. Bad input (a
model without SE blocks, a missing, malformed or foreign stats file) is one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from contract.files import write_text
from edge_se.argtypes import number
from edge_se.cliargs import add_model_source, add_seed, add_threads
from edge_se.errors import EdgeSeError, first_line

DEFAULT_OOD_IMAGES = 360  # images per OOD set: as many as the digits test split holds
DATA_CHOICES = ("digits", "textures")
FALLBACK_RESOLUTION = 32  # pixels, when neither --resolution nor a sidecar says


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``anomaly fit`` and ``anomaly score`` to the ``edge-se`` parser."""
    from device_bench.gate_fit import DEFAULT_COMBINE
    from device_bench.gate_score import COMBINES
    from studies.anomaly import DEFAULT_COMPONENTS, DEFAULT_FPR

    p = sub.add_parser("anomaly", help="out-of-distribution score from SE gate vectors (fit, score)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=type(p))
    verbs.required = True

    def common(q: argparse.ArgumentParser, *, weights: str, resolution_note: str) -> None:
        q.add_argument("model", help="registry name, e.g. mobilenetv3_small_100")
        q.add_argument("--data", choices=DATA_CHOICES, default="digits", help="in-distribution images")
        add_model_source(q, weights=weights, resolution_note=resolution_note)
        add_threads(q)

    f = verbs.add_parser("fit", help="fit the gate statistics on the training split")
    common(f, weights="the trained model (without: random weights, meaningless gates)",
           resolution_note="the weights sidecar's, else 32")
    f.add_argument("--fpr", type=number("--fpr", float, minimum=None), default=DEFAULT_FPR,
                   help="share of held-out in-distribution images the threshold may flag")
    f.add_argument("--components", type=number("--components"), default=DEFAULT_COMPONENTS, metavar="K",
                   help="principal components kept per SE block")
    f.add_argument("--combine", choices=COMBINES, default=DEFAULT_COMBINE,
                   help="how block z-scores make one score: max-z (the most surprised block) or sum-z")
    add_seed(f, seeds="the fit/calibration split of the training images")
    f.add_argument("--out", required=True, metavar="STATS.json", help="stats file to write")
    f.set_defaults(func=run_fit)

    s = verbs.add_parser("score", help="AUROC of the gate score and of max-softmax on every OOD set")
    common(s, weights="the model the stats were fitted on",
           resolution_note="the stats', else the weights sidecar's, else 32")
    s.add_argument("--stats", required=True, metavar="STATS.json", help="`edge-se anomaly fit` output")
    s.add_argument("--images", type=number("--images"), default=DEFAULT_OOD_IMAGES, metavar="N",
                   help="images per OOD set")
    add_seed(s, seeds="the OOD sets")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    s.set_defaults(func=run_score)


def load_stats(path: str | Path) -> dict[str, Any]:
    """Read and check a stats file; a missing, malformed or other-schema one raises :class:`EdgeSeError`."""
    from device_bench.gate_score import check_stats

    p = Path(path)
    if not p.is_file():
        raise EdgeSeError(f"stats file {p} not found; write one with `edge-se anomaly fit`")
    try:
        stats = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeSeError(f"stats file {p} is not JSON: {first_line(exc)}") from None
    try:
        check_stats(stats)
    except ValueError as exc:
        raise EdgeSeError(f"stats file {p}: {exc}") from None
    return stats


def check_fitted_for(stats: dict[str, Any], model_name: str, layout: list[tuple[str, int]], path: str) -> None:
    """Raise :class:`EdgeSeError` unless ``stats`` were fitted for ``model_name`` with this SE ``layout``."""
    fitted = [(b["name"], int(b["channels"])) for b in stats["blocks"]]
    if stats.get("model") not in (None, model_name) or fitted != layout:
        raise EdgeSeError(f"unfitted model: stats file {path} was fitted for {stats.get('model')!r} with "
                          f"{len(fitted)} SE blocks, not {model_name!r} with {len(layout)}; "
                          "refit with `edge-se anomaly fit`")


def _model(args: argparse.Namespace, num_classes: int) -> tuple[Any, dict]:
    """The float model and its sidecar; a model without SE blocks is an error."""
    from edge_se.gates import se_modules
    from edge_se.train import load_float_model

    model, meta = load_float_model(args.model, args.weights, num_classes=num_classes)
    if not se_modules(model):
        raise EdgeSeError(f"model {args.model!r} has no SE blocks, so it has no gate vectors to score; "
                          "use a model with Squeeze-and-Excitation (e.g. mobilenetv3_small_100)")
    return model, meta


def _layout_from_gates(gates: dict[str, Any]) -> list[tuple[str, int]]:
    return [(k, int(v.shape[1])) for k, v in gates.items()]


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file in the same folder and a rename."""
    write_text(path, json.dumps(obj, separators=(",", ":")) + "\n")


def run_fit(args: argparse.Namespace) -> int:
    """Fit the stats on the training split's gate vectors and write them; print one JSON line."""
    import torch

    from edge_se.data import load_images
    from studies.anomaly import fit, gate_vectors

    torch.set_num_threads(args.threads)
    if not 0.0 < args.fpr < 1.0:
        raise EdgeSeError(f"--fpr must lie strictly between 0 and 1, got {args.fpr:g}")
    probe = load_images(args.data, 8, split="test")
    model, meta = _model(args, len(probe.classes))
    resolution = args.resolution or int(meta.get("resolution") or FALLBACK_RESOLUTION)
    train = load_images(args.data, resolution, split="train")
    _log(json.dumps({"anomaly": "fit", "model": args.model, "data": args.data, "resolution": resolution,
                     "images": len(train), "fpr": args.fpr, "components": args.components}))
    gates = gate_vectors(model, train.images)
    try:
        stats = fit(gates, fpr=args.fpr, components=args.components, seed=args.seed, combine=args.combine,
                    source=f"{args.data}/train")
    except ValueError as exc:
        raise EdgeSeError(str(exc)) from None
    stats.update({"model": args.model, "weights": str(args.weights) if args.weights else None,
                  "data": args.data, "resolution": resolution})
    write_json_atomic(args.out, stats)
    size = Path(args.out).stat().st_size
    print(json.dumps({"out": str(args.out), "size_bytes": size, "blocks": len(stats["blocks"]),
                      "threshold": stats["threshold"], "fit_images": stats["fit_images"],
                      "calibration_images": stats["calibration_images"]}))
    return 0


def run_score(args: argparse.Namespace) -> int:
    """Evaluate both scores on every OOD set; print a table or one JSON object."""
    import torch

    from edge_se.data import load_images
    from edge_se.tables import Column, table
    from studies.anomaly import evaluate_sets, gate_vectors
    from studies.ood import ood_sets

    torch.set_num_threads(args.threads)
    stats = load_stats(args.stats)
    data = args.data
    test_probe = load_images(data, 8, split="test")
    model, meta = _model(args, len(test_probe.classes))
    resolution = args.resolution or int(stats.get("resolution") or meta.get("resolution") or FALLBACK_RESOLUTION)
    if stats.get("data") not in (None, data):
        raise EdgeSeError(f"stats file {args.stats} was fitted on {stats['data']!r} images, not {data!r}; "
                          f"pass --data {stats['data']} or refit")
    if stats.get("resolution") not in (None, resolution):
        raise EdgeSeError(f"stats file {args.stats} was fitted at {stats['resolution']} px, not {resolution}; "
                          "drop --resolution or refit at this resolution")
    test = load_images(data, resolution, split="test")
    layout = _layout_from_gates(gate_vectors(model, test.images[:1]))
    check_fitted_for(stats, args.model, layout, args.stats)
    sets = ood_sets(data, resolution, n=args.images, seed=args.seed)
    rows = evaluate_sets(model, stats, test.images, sets)
    if args.json:
        print(json.dumps({"model": args.model, "data": data, "resolution": resolution, "stats": str(args.stats),
                          "rows": rows}))
        return 0
    cols = [Column("OOD set", "ood"), Column("gate AUROC", "gate_auroc", align="right"),
            Column("gate FPR@95TPR", "gate_fpr_at_95tpr", align="right"),
            Column("gate flagged", "gate_flagged", align="right"),
            Column("max-softmax AUROC", "msp_auroc", align="right"),
            Column("max-softmax FPR@95TPR", "msp_fpr_at_95tpr", align="right"),
            Column("images", "images", align="right")]
    print(table(cols, rows))
    return 0


__all__ = ["check_fitted_for", "load_stats", "register", "run_fit", "run_score", "write_json_atomic"]
