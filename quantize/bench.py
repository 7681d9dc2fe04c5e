"""``make bench-quant``: the policy x engine x target matrix, measured, as JSON lines and a table.

    python -m quantize.bench [--models ...] [--policies ...] [--targets pte,tflite]
                             [--engines torchao,nncf] [--out results/quant_bench.jsonl]

The suite (:data:`CASES`, the table's ``case`` column): easy cases that guard against regressions
(edge-se's MobileNetV3-Small and EfficientNet-B0 trained on the digits at 64x64 with edge-se's
recipe) and hard cases where plain PTQ loses fidelity: (a) the same networks trained from another
Linear init (``edge-se:ARCH+INIT``, ``edge_se.init``: ``+torch-default``; ``+builder-init`` is
``efficientnet-uniform``, TF's and timm's classifier init, which edge-se's builder used before);
(b) ``external:LIB/ARCH``: timm's and torchvision's own modules with their own init, trained on the
digits, saved as plain state dicts and loaded through ``--weights``'s loader; (c) timm's
MobileNetV3-Large with random weights and randomised BatchNorm (nothing is downloaded; its
accuracy means nothing, its fidelity does); (d) SE-ResNet-50 trained from PyTorch's default init.
Every trained network is trained here on first use (weights and the record of their init and seed
cached under ``results/weights``), so a fresh run trains exactly the rows it names: about 2.5 min
(EfficientNet-B0, 8 epochs) to 5 min (SE-ResNet-50, 6 epochs) each on one core.
Calibration: 64 images of the digits training split (``--calib-size``); evaluation: the 360 held-out images; the
int8 rewrites are the shipped default (``--int8-rewrites``), so a row is what ``edge-se export``
writes with that policy.
A benchmark, not a test: the full matrix takes about 45 min with two processes on 2 cores, so cells run most
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
from device_bench.sysinfo import system_line, system_record
from edge_se.data import load_images
from edge_se.init import DEFAULT_INIT, LINEAR_INITS, randomize_batchnorm
from edge_se.tables import Column, fmt, table

RESOLUTION = 64
# ``edge-se:ARCH+builder-init``: trained without the recipe's Linear init (see edge_se.train).
# `+NAME` after an edge-se model trains it from the Linear init NAME (edge_se.init.LINEAR_INITS);
# `+builder-init` is the init edge-se's builder used before it took the recipe's: EfficientNet's uniform.
VARIANT_INITS = {"builder-init": "efficientnet-uniform"}
CALIB_SIZE = 64
TRAIN_EPOCHS = {"mobilenetv3_small_100": 15, "efficientnet_b0": 8, "seresnet50": 6}
# ``edge-se:ARCH@textures``: trained on the harder task (edge_se.textures, 20 classes, far from
# saturated), where an int8 accuracy drop can show; digits saturate.
DATA_SOURCES = ("digits", "textures")
TEXTURES_EPOCHS = {"mobilenetv3_small_100": 20, "efficientnet_b0": 15}
# ``external:LIB/ARCH``: a network trained outside edge-se's builder, as a user brings one: LIB's own
# module with LIB's own initialisation, trained on digits (edge_se.train's loop; neither library ships a
# training loop as an importable API), saved as a plain state dict in LIB's naming, and loaded into
# edge-se's network through ``edge_se.weights.load_weights``, exactly what ``--weights FILE`` does.
EXTERNAL = {
    "timm/efficientnet_b0": "efficientnet_b0",
    "timm/mobilenetv3_small_100": "mobilenetv3_small_100",
    "torchvision/efficientnet_b0": "efficientnet_b0",
    "torchvision/mobilenet_v3_small": "mobilenetv3_small_100",
}
# The suite: each model with the case it stands for (the table's ``case`` column). The easy cases
# guard against regressions; the hard ones are where plain PTQ loses fidelity (results/quant_bench.md).
CASES: dict[str, str] = {
    "edge-se:mobilenetv3_small_100": "easy: edge-se's recipe",
    "edge-se:efficientnet_b0": "easy: edge-se's recipe",
    "edge-se:mobilenetv3_small_100+torch-default": "hard (a): PyTorch's default Linear init",
    "edge-se:efficientnet_b0+torch-default": "hard (a): PyTorch's default Linear init",
    "edge-se:mobilenetv3_small_100+builder-init": "hard (a): TF/timm's uniform classifier init",
    "edge-se:efficientnet_b0+builder-init": "hard (a): TF/timm's uniform classifier init",
    "external:timm/efficientnet_b0": "hard (b): timm's module, loaded via --weights",
    "external:timm/mobilenetv3_small_100": "hard (b): timm's module, loaded via --weights",
    "external:torchvision/efficientnet_b0": "hard (b): torchvision's module, loaded via --weights",
    "timm:mobilenetv3_large_100": "hard (c): random weights, randomised BatchNorm",
    "edge-se:seresnet50+torch-default": "hard (d): SE-ResNet-50, PyTorch's default Linear init",
    "edge-se:mobilenetv3_small_100@textures": "harder task: textures (20 classes)",
    "edge-se:efficientnet_b0@textures": "harder task: textures (20 classes)",
}
DEFAULT_MODELS = tuple(CASES)
# Text after this line of results/quant_bench.md is hand-written and kept when the table is rewritten.
NOTES_MARKER = "<!-- notes -->"
DEFAULT_POLICIES = (
    "ptq",
    "act-outlier",
    "bias-correction",
    "act-outlier,bias-correction",
    "auto",
    "se-float-mul",
    "float-sensitive",
    "adaround",
    "cle",
    "qat",
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_bench_model(spec: str, weights_dir: Path) -> tuple[nn.Module, dict]:
    """The model named ``lib:arch`` and a record of its weights (trained here for ``edge-se:``)."""
    lib, _, rest = spec.partition(":")
    rest, data = _data_of(rest)
    arch, _, variant = rest.partition("+")
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
        path = weights_dir / f"{arch}_{data}{RESOLUTION}{'_' + init if init != DEFAULT_INIT else ''}.pt"
        if not path.exists():
            train_set = load_images(data, RESOLUTION, split="train")
            model = build_model(arch, num_classes=len(train_set.classes))
            init_linear_layers(model, init)
            epochs = TRAIN_EPOCHS.get(arch, 10) if data == "digits" else TEXTURES_EPOCHS.get(arch, 20)
            _log(f"training {arch} for {epochs} epochs on {data} at {RESOLUTION}px")
            result = train(model, train_set, epochs=epochs,
                           eval_data=load_images(data, RESOLUTION, split="test"), log=_log)
            save_weights(path, model, model_name=arch, num_classes=len(train_set.classes), resolution=RESOLUTION,
                         extra={"accuracy": result.accuracy, "epochs": epochs, "seconds": round(result.seconds, 1),
                                "data": data, "init": {"linear": init, "seed": 0}, **_trained_on()})
        model, meta = load_model(path)
        return model, {"weights": str(path), "float_accuracy_trained": meta.get("accuracy"),
                       "init": meta.get("init", {"linear": init}),
                       "weights_trained_on": meta.get("trained_on"), "weights_torch": meta.get("torch")}
    if data != "digits" and lib != "edge-se":
        raise ValueError(f"@{data} in {spec!r}: only edge-se models train on another data source")
    if lib == "external":
        return _external_model(arch, weights_dir)
    if lib == "torchvision":
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    elif lib == "timm":
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=10)
    else:
        raise ValueError(f"unknown model library {lib!r} in {spec!r}; valid: edge-se, torchvision, timm")
    return randomize_batchnorm(model), {"weights": "random, randomised BatchNorm"}


def _trained_on() -> dict[str, Any]:
    """What the weights' sidecar records of the machine that trained them.

    The same seed, init and recipe give other weights on another CPU (float reductions in another
    order: AVX-512 and AVX2 kernels): EfficientNet-B0 from the uniform init, trained on the VNNI
    EPYC, kept 83% top-1 agreement under plain int8 (.pte); trained on the AVX2 EPYC, 60%. A row
    says which machine trained its weights, so that the row reproduces where that machine does.
    """
    return {"trained_on": system_record(), "torch": torch.__version__}


def _data_of(spec: str) -> tuple[str, str]:
    """``("ARCH+INIT", DATA)`` of ``ARCH+INIT@DATA`` (DATA: digits by default, or textures)."""
    rest, _, data = spec.partition("@")
    data = data or "digits"
    if data not in DATA_SOURCES:
        raise ValueError(f"unknown data {data!r} in {spec!r}; valid: {', '.join(DATA_SOURCES)}")
    return rest, data


def _external_model(name: str, weights_dir: Path) -> tuple[nn.Module, dict]:
    """``external:LIB/ARCH`` (see :data:`EXTERNAL`): trained on first use, then loaded as ``--weights`` would."""
    from edge_se.train import save_state_dict, train
    from edge_se.weights import load_weights

    if name not in EXTERNAL:
        raise ValueError(f"unknown external model {name!r}; valid: {', '.join(EXTERNAL)}")
    lib, _, arch = name.partition("/")
    ours = EXTERNAL[name]
    path = weights_dir / f"external_{lib}_{arch}_digits{RESOLUTION}.pt"
    record_path = path.with_suffix(".record.json")  # not a weights sidecar: the file loads as a foreign state dict
    if not path.exists():
        torch.manual_seed(0)
        if lib == "timm":
            import timm

            foreign = timm.create_model(arch, pretrained=False, num_classes=10)
        else:
            import torchvision

            foreign = getattr(torchvision.models, arch)(weights=None, num_classes=10)
        epochs = TRAIN_EPOCHS.get(ours, 10)
        _log(f"training {lib}'s {arch} (its own init) for {epochs} epochs on digits at {RESOLUTION}px")
        result = train(foreign, load_images("digits", RESOLUTION, split="train"), epochs=epochs,
                       eval_data=load_images("digits", RESOLUTION, split="test"), log=_log)
        save_state_dict(path, foreign.state_dict())
        write_text(record_path, json.dumps({"library": lib, "arch": arch, "init": f"{lib}'s own", "seed": 0,
                                            "epochs": epochs, "accuracy": result.accuracy,
                                            "seconds": round(result.seconds, 1), **_trained_on()}, indent=2) + "\n")
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    model = load_weights(ours, path).eval()
    return model, {"weights": str(path), "float_accuracy_trained": record.get("accuracy"),
                   "init": {"linear": record.get("init", f"{lib}'s own")}, "loaded_as": ours,
                   "weights_trained_on": record.get("trained_on"), "weights_torch": record.get("torch")}


def run_cell(model: nn.Module, calib: torch.Tensor, held, target: str, engine: str, policy: str,  # noqa: ANN001
             rewrites: str = "none", data: str = "digits", calib_size: int = CALIB_SIZE) -> dict:
    """Quantise and evaluate one cell; the record of the JSON line.

    ``rewrites``: :mod:`quantize.int8_ops`; ``calib_size``: the images the policy draws from the pool
    ``calib`` (the whole training split).
    """
    from quantize.core import quantize_model
    from quantize.diagnose import error_split
    from quantize.evaluate import evaluate

    start = time.perf_counter()
    qm = quantize_model(model, (calib[:1],), [calib], target=target, policy=policy, engine=engine,  # type: ignore[arg-type]
                        seed=0,
                        calib_size=calib_size, calib_source=data, rewrites=rewrites)
    seconds = time.perf_counter() - start
    figures = evaluate(qm, held.images, held.labels)
    # which grids the loss comes from (weights only / activations only int8): which remedies can reach it
    split = error_split(qm, held.images).as_dict()
    return {"calibration": qm.calibration, "rewrites": qm.rewrites, "auto_steps": qm.steps, "qat": qm.qat,
            "se_blocks": len(qm.se_blocks), "quantize_seconds": round(seconds, 1), **figures, "error_split": split}


def _figure(header: str, key: str, *, scale: float = 1.0) -> Column:
    """A figure column (one decimal); empty for a failed cell, whose error is in the SQNR column."""
    def cell(r: Mapping[str, Any]) -> str:
        return "" if "error" in r else fmt(None if r.get(key) is None else r[key] * scale, ".1f")
    return Column(header, cell, align="right")


_COLUMNS = (
    Column("model", "model"), Column("case", lambda r: CASES.get(r["model"], "")),
    Column("target", "target"), Column("engine", "engine"), Column("policy", "policy"),
    Column("int8 rewrites", lambda r: _rewrites(r)),
    Column("logits SQNR dB", lambda r: f"failed: {r['error'][:80]}" if "error" in r else fmt(r["sqnr_db"], ".1f")),
    _figure("median", "sqnr_db_median"), _figure("worst", "sqnr_db_worst"),
    _figure("top-1 agree %", "top1_agreement", scale=100), _figure("accuracy %", "accuracy", scale=100),
    _figure("float acc %", "float_accuracy", scale=100),
    _figure("gate SQNR min dB", "gate_sqnr_db_min"), _figure("gate median", "gate_sqnr_db_median"),
    Column("int8 weights / activations only dB", lambda r: _split(r), align="right"),
    Column("auto chose", lambda r: _auto_choice(r)),
    Column("s", lambda r: "" if "error" in r else str(r.get("quantize_seconds"))),
)


def _split(r: Mapping[str, Any]) -> str:
    """Logits SQNR with only the weights, and with only the activations, int8 (``quantize.diagnose.error_split``)."""
    split = r.get("error_split")
    if not split or "error" in r:
        return ""
    return f"{split['sqnr_db_weights_only']:.1f} / {split['sqnr_db_activations_only']:.1f}"


def _auto_choice(r: Mapping[str, Any]) -> str:
    """What ``auto`` chose: its stage-1 recipe, SE blocks and tensors moved to fp32, qat if kept ("" for others)."""
    steps = r.get("auto_steps") or []
    chosen = next((s for s in steps if s.get("chosen")), None)
    if chosen is None:
        return ""
    blocks = max((len(s["float_blocks"]) for s in steps if s.get("accepted")), default=0)
    tensors = max((len(s.get("float_tensors") or []) for s in steps if s.get("accepted")), default=0)
    tuned = any(s.get("accepted") and str(s.get("recipe", "")).endswith(",qat") for s in steps)
    return (chosen["recipe"] + (f" + {blocks} SE blocks fp32" if blocks else "")
            + (f" + {tensors} tensors fp32" if tensors else "") + (" + qat" if tuned else ""))


def markdown_table(records: list[dict]) -> str:
    """One row per measured cell: the figures the issue judges by, plus the failures (their error instead).

    Above it, the CPU every row was measured on (its model, architecture and int8-relevant flags).
    """
    systems = sorted({system_line(r.get("system")) for r in records})
    return "".join(f"CPU: {line}\n\n" for line in systems) + table(_COLUMNS, records) + "\n"


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
    second engine; each cell once per rewrite setting, side by side. NNCF cells always use the stock
    quantizer (``none``): NNCF's ``quantize_pt2e`` rejects the fixed-parameter specs of the int8
    rewrites ("Unknown torchao quantization spec: FixedQParamsQuantizationSpec").
    """
    cells = []
    seen: set[tuple[str, str, str, str, str]] = set()
    for m_i, spec in enumerate(models):
        for t_i, target in enumerate(targets):
            for e_i, engine in enumerate(engines):
                for p_i, policy in enumerate(policies):
                    if engine == "nncf" and policy not in nncf_policies:
                        continue
                    for r_i, rw in enumerate(rewrites):
                        cell = (spec, target, engine, policy, "none" if engine == "nncf" else rw)
                        if cell not in seen:
                            seen.add(cell)
                            cells.append(((e_i, 0 if policy == "ptq" else 1, p_i, m_i, t_i, r_i), cell))
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
    parser.add_argument("--nncf-policies", default="ptq", help="policies also run with nncf")
    parser.add_argument("--int8-rewrites", default="default",
                        help="int8 rewrite settings separated by ';' (default, none or names a,b: quantize.int8_ops)")
    parser.add_argument("--out", default="results/quant_bench.jsonl")
    parser.add_argument("--table", default="results/quant_bench.md")
    parser.add_argument("--weights-dir", default="results/weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calib-size", type=int, default=CALIB_SIZE,
                        help=f"images each policy calibrates on, drawn from the training split (default {CALIB_SIZE})")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the table from --out")
    parser.add_argument("--budget-min", type=float, default=0.0,
                        help="start no new cell after this many minutes (0: no limit)")
    args = parser.parse_args(argv)
    if args.calib_size < 1:
        parser.error(f"--calib-size must be >= 1, got {args.calib_size}")
    out = Path(args.out)
    records = read_records(out)
    if args.table_only:
        write_table(args.table, records)
        return 0
    torch.set_num_threads(args.threads)
    system = system_record()
    datasets = {d: (load_images(d, RESOLUTION, split="train").images, load_images(d, RESOLUTION, split="test"))
                for d in sorted({_data_of(m.partition(":")[2])[1] for m in args.models.split(",")})}
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
        data = _data_of(spec.partition(":")[2])[1]
        record: dict = {"model": spec, "target": target, "engine": engine, "policy": policy,
                        "int8_rewrites": rw, "resolution": RESOLUTION, "data": data, "system": system, **weights}
        try:
            calib, held = datasets[data]
            record.update(run_cell(model, calib, held, target, engine, policy, rw, data, args.calib_size))
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
