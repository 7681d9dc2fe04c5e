"""``make bench-quant``: the policy x engine x target matrix, measured, as JSON lines and a table.

    python -m quantize.bench [--models ...] [--policies ...] [--targets pte,tflite]
                             [--engines torchao,nncf] [--out results/quant_bench.jsonl]

Models: edge-se's MobileNetV3-Small and EfficientNet-B0 trained on the digits data at 64x64
(trained here on first use, weights cached under ``results/weights``), and torchvision's and
timm's EfficientNet-B0 and MobileNetV3-Large with random weights and randomised BatchNorm
statistics (nothing is downloaded; their accuracy means nothing, their fidelity does).
``edge-se:ARCH+INIT`` is the same model trained from another Linear init (``edge_se.init``:
``+torch-default``, ``+efficientnet-uniform``; ``+builder-init`` is the latter, the init edge-se's builder
used before, the cause of the low int8 fidelity found earlier; see results/quant_bench.md). The init
is recorded with the weights, so a fresh run trains exactly the row it names. Training the defaults takes
about 6 min (MobileNetV3-Small, 15 epochs) and 7.5 min (EfficientNet-B0, 8 epochs) on one core.
Calibration: 64 images of the digits training split; evaluation: the 360 held-out images.
A benchmark, not a test: the full matrix takes about an hour on 2 cores, so cells run most
informative first (every model's ``ptq``, then each policy across models, then NNCF), cells
already in ``--out`` are skipped (a rerun resumes), and ``--budget-min`` stops starting new cells
after that many minutes. Every cell is appended as soon as it is measured (atomically), a failing
cell is recorded with its error, and hand-written notes after ``<!-- notes -->`` in the table
file are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contract.errors import first_line
from contract.files import append_line, write_text
from edge_se.data import load_images
from edge_se.init import DEFAULT_INIT, LINEAR_INITS, randomize_batchnorm
from edge_se.tables import Column, fmt, table

RESOLUTION = 64
# ``edge-se:ARCH+builder-init``: trained without the recipe's Linear init (see edge_se.train).
# `+NAME` after an edge-se model trains it from the Linear init NAME (edge_se.init.LINEAR_INITS);
# `+builder-init` is the init edge-se's builder used before it took the recipe's: EfficientNet's uniform.
VARIANT_INITS = {"builder-init": "efficientnet-uniform"}
CALIB_SIZE = 64
TRAIN_EPOCHS = {"mobilenetv3_small_100": 15, "efficientnet_b0": 8}
DEFAULT_MODELS = (
    "edge-se:mobilenetv3_small_100",
    "edge-se:efficientnet_b0",
    "torchvision:efficientnet_b0",
    "torchvision:mobilenet_v3_large",
    "timm:efficientnet_b0",
    "timm:mobilenetv3_large_100",
    "edge-se:mobilenetv3_small_100+builder-init",
    "edge-se:efficientnet_b0+builder-init",
)
# Text after this line of results/quant_bench.md is hand-written and kept when the table is rewritten.
NOTES_MARKER = "<!-- notes -->"
DEFAULT_POLICIES = (
    "ptq",
    "gate-fixed",
    "se-float",
    "se-float-mul",
    "gate-coverage",
    "act-minmax",
    "act-percentile",
    "auto",
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_bench_model(spec: str, weights_dir: Path) -> tuple[nn.Module, dict]:
    """The model named ``lib:arch`` and a record of its weights (trained here for ``edge-se:``)."""
    lib, _, arch = spec.partition(":")
    arch, _, variant = arch.partition("+")
    torch.manual_seed(0)
    model: nn.Module
    if lib == "edge-se":
        from edge_se.registry import build_model
        from edge_se.train import init_linear_layers, load_model, save_weights, train

        init = VARIANT_INITS.get(variant, variant) or DEFAULT_INIT
        if init not in LINEAR_INITS:
            valid = ", ".join([*VARIANT_INITS, *(i for i in LINEAR_INITS if i != DEFAULT_INIT)])
            raise ValueError(f"unknown variant {variant!r} in {spec!r}; valid: {valid}")
        # The init is part of the weights' name and sidecar: a fresh run trains the row it names.
        path = weights_dir / f"{arch}_digits{RESOLUTION}{'_' + init if init != DEFAULT_INIT else ''}.pt"
        if not path.exists():
            model = build_model(arch, num_classes=10)
            init_linear_layers(model, init)
            epochs = TRAIN_EPOCHS.get(arch, 10)
            _log(f"training {arch} for {epochs} epochs on digits at {RESOLUTION}px")
            result = train(model, load_images("digits", RESOLUTION, split="train"), epochs=epochs,
                           eval_data=load_images("digits", RESOLUTION, split="test"), log=_log)
            save_weights(path, model, model_name=arch, num_classes=10, resolution=RESOLUTION,
                         extra={"accuracy": result.accuracy, "epochs": epochs, "seconds": round(result.seconds, 1),
                                "data": "digits", "init": {"linear": init, "seed": 0}})
        model, meta = load_model(path)
        return model, {"weights": str(path), "float_accuracy_trained": meta.get("accuracy"),
                       "init": meta.get("init", {"linear": init})}
    if lib == "torchvision":
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    elif lib == "timm":
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=10)
    else:
        raise ValueError(f"unknown model library {lib!r} in {spec!r}; valid: edge-se, torchvision, timm")
    return randomize_batchnorm(model), {"weights": "random, randomised BatchNorm"}


def run_cell(model: nn.Module, calib: torch.Tensor, held, target: str, engine: str, policy: str,  # noqa: ANN001
             rewrites: str = "none") -> dict:
    """Quantise and evaluate one cell; the record of the JSON line (``rewrites``: quantize.int8_ops)."""
    from quantize.core import quantize_model
    from quantize.evaluate import evaluate

    start = time.perf_counter()
    qm = quantize_model(model, (calib[:1],), [calib], target=target, policy=policy, engine=engine,  # type: ignore[arg-type]
                        seed=0,
                        calib_size=CALIB_SIZE, calib_source="digits", rewrites=rewrites)
    seconds = time.perf_counter() - start
    figures = evaluate(qm, held.images, held.labels)
    return {"calibration": qm.calibration, "rewrites": qm.rewrites, "auto_steps": qm.steps,
            "se_blocks": len(qm.se_blocks), "quantize_seconds": round(seconds, 1), **figures}


def _figure(header: str, key: str, *, scale: float = 1.0) -> Column:
    """A figure column (one decimal); empty for a failed cell, whose error is in the SQNR column."""
    def cell(r: Mapping[str, Any]) -> str:
        return "" if "error" in r else fmt(None if r.get(key) is None else r[key] * scale, ".1f")
    return Column(header, cell, align="right")


_COLUMNS = (
    Column("model", "model"), Column("target", "target"), Column("engine", "engine"), Column("policy", "policy"),
    Column("int8 rewrites", lambda r: _rewrites(r)),
    Column("logits SQNR dB", lambda r: f"failed: {r['error'][:80]}" if "error" in r else fmt(r["sqnr_db"], ".1f")),
    _figure("median", "sqnr_db_median"), _figure("worst", "sqnr_db_worst"),
    _figure("top-1 agree %", "top1_agreement", scale=100), _figure("accuracy %", "accuracy", scale=100),
    _figure("gate SQNR min dB", "gate_sqnr_db_min"), _figure("gate median", "gate_sqnr_db_median"),
    Column("s", lambda r: "" if "error" in r else str(r.get("quantize_seconds"))),
)


def markdown_table(records: list[dict]) -> str:
    """One row per measured cell: the figures the issue judges by, plus the failures (their error instead)."""
    return table(_COLUMNS, records) + "\n"


def _rewrites(r: Mapping[str, Any]) -> str:
    # Records made before quantize.int8_ops existed used the stock quantizers: "none".
    return str(r.get("int8_rewrites", "none"))


def _key(r: dict) -> tuple[str, str, str, str, str]:
    return (r["model"], r["target"], r["engine"], r["policy"], _rewrites(r))


def read_records(path: Path) -> list[dict]:
    """The JSON lines of ``path`` (none when it is missing), the last record of each cell winning."""
    if not path.exists():
        return []
    by_key: dict[tuple[str, str, str, str, str], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by_key.pop(_key(r), None)
            by_key[_key(r)] = r
    return list(by_key.values())


def write_table(path: str | Path, records: list[dict]) -> None:
    """Write the table to ``path``, keeping any hand-written text after :data:`NOTES_MARKER`."""
    p = Path(path)
    old = p.read_text() if p.exists() else ""
    notes = old[old.index(NOTES_MARKER):] if NOTES_MARKER in old else ""
    write_text(p, markdown_table(records) + ("\n" + notes if notes else ""))


def plan_cells(models: list[str], policies: list[str], targets: list[str], engines: list[str],
               nncf_policies: set[str], rewrites: Sequence[str] = ("none",)) -> list[tuple[str, str, str, str, str]]:
    """Cells ``(model, target, engine, policy, int8 rewrites)``, the most informative first.

    Order: the ``ptq`` baseline of every model, then the other policies in the order given, then the
    second engine; each cell once per rewrite setting, side by side.
    """
    cells = []
    for m_i, spec in enumerate(models):
        for t_i, target in enumerate(targets):
            for e_i, engine in enumerate(engines):
                for p_i, policy in enumerate(policies):
                    if engine == "nncf" and policy not in nncf_policies:
                        continue
                    for r_i, rw in enumerate(rewrites):
                        rank = (e_i, 0 if policy == "ptq" else 1, p_i, m_i, t_i, r_i)
                        cells.append((rank, (spec, target, engine, policy, rw)))
    return [c for _, c in sorted(cells)]


def main(argv: list[str] | None = None) -> int:
    """Run the matrix; append JSON lines; rewrite the markdown table after every cell."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="lib:arch, comma-separated")
    parser.add_argument("--policies", default=";".join(DEFAULT_POLICIES),
                        help="policies separated by ';' (a policy may itself be a,b)")
    parser.add_argument("--targets", default="pte,tflite")
    parser.add_argument("--engines", default="torchao,nncf")
    parser.add_argument("--nncf-policies", default="ptq;act-minmax", help="policies also run with nncf")
    parser.add_argument("--int8-rewrites", default="none",
                        help="int8 rewrite settings separated by ';' (default, none or names a,b: quantize.int8_ops)")
    parser.add_argument("--out", default="results/quant_bench.jsonl")
    parser.add_argument("--table", default="results/quant_bench.md")
    parser.add_argument("--weights-dir", default="results/weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from --out")
    parser.add_argument("--budget-min", type=float, default=0.0,
                        help="start no new cell after this many minutes (0: no limit)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    records = read_records(out)
    if args.table_only:
        write_table(args.table, records)
        return 0
    torch.set_num_threads(args.threads)
    calib = load_images("digits", RESOLUTION, split="train").images
    held = load_images("digits", RESOLUTION, split="test")
    done = {_key(r) for r in records if "error" not in r}
    cells = plan_cells(args.models.split(","), args.policies.split(";"), args.targets.split(","),
                       args.engines.split(","), set(args.nncf_policies.split(";")), args.int8_rewrites.split(";"))
    loaded: dict[str, tuple[nn.Module, dict]] = {}
    started = time.perf_counter()
    for key in cells:
        if key in done:
            continue
        if args.budget_min and time.perf_counter() - started > 60 * args.budget_min:
            _log(f"bench-quant: budget of {args.budget_min} min spent; rerun to resume")
            break
        spec, target, engine, policy, rw = key
        if spec not in loaded:
            loaded[spec] = load_bench_model(spec, Path(args.weights_dir))
        model, weights = loaded[spec]
        _log(f"bench-quant: {spec} {target} {engine} {policy} int8-rewrites={rw}")
        record: dict = {"model": spec, "target": target, "engine": engine, "policy": policy,
                        "int8_rewrites": rw, "resolution": RESOLUTION, **weights}
        try:
            record.update(run_cell(model, calib, held, target, engine, policy, rw))
            _log(f"  -> sqnr {record['sqnr_db']:.1f} dB (worst {record['sqnr_db_worst']:.1f}), "
                 f"agree {record['top1_agreement']:.4f}, gate min {record['gate_sqnr_db_min']}")
        except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the rest goes on
            record["error"] = first_line(exc, limit=10_000)
            _log(traceback.format_exc(limit=3))
        append_line(out, json.dumps(record))
        records = read_records(out)  # other runs may append to the same file
        write_table(args.table, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
