"""``make bench-quant``: the policy x engine x target matrix, measured, as JSON lines and a table.

    python -m quantize.bench [--models ...] [--policies ...] [--targets pte,tflite]
                             [--engines torchao,nncf] [--out results/quant_bench.jsonl]

Models: edge-se's MobileNetV3-Small and EfficientNet-B0 trained on the digits data at 64x64
(trained here on first use, weights cached under ``results/weights``), and torchvision's and
timm's EfficientNet-B0 and MobileNetV3-Large with random weights and randomised BatchNorm
statistics (nothing is downloaded; their accuracy means nothing, their fidelity does).
Calibration: 64 images of the digits training split; evaluation: the 360 held-out images.
A benchmark, not a test: it takes tens of minutes on 2 cores. Every cell is appended as soon as
it is measured (atomically), and a failing cell is recorded with its error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from edge_se.atomic import append_line, write_text
from edge_se.data import load_images

RESOLUTION = 64
CALIB_SIZE = 64
TRAIN_EPOCHS = {"mobilenetv3_small_100": 15, "efficientnet_b0": 8}
DEFAULT_MODELS = (
    "edge-se:mobilenetv3_small_100",
    "edge-se:efficientnet_b0",
    "torchvision:efficientnet_b0",
    "torchvision:mobilenet_v3_large",
    "timm:efficientnet_b0",
    "timm:mobilenetv3_large_100",
)
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


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, so a random-weight network has non-trivial logits."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
    return model.eval()


def load_bench_model(spec: str, weights_dir: Path) -> tuple[nn.Module, dict]:
    """The model named ``lib:arch`` and a record of its weights (trained here for ``edge-se:``)."""
    lib, _, arch = spec.partition(":")
    torch.manual_seed(0)
    model: nn.Module
    if lib == "edge-se":
        from edge_se.registry import build_model
        from edge_se.train import load_model, save_weights, train

        path = weights_dir / f"{arch}_digits{RESOLUTION}.pt"
        if not path.exists():
            model = build_model(arch, num_classes=10)
            epochs = TRAIN_EPOCHS.get(arch, 10)
            _log(f"training {arch} for {epochs} epochs on digits at {RESOLUTION}px")
            result = train(model, load_images("digits", RESOLUTION, split="train"), epochs=epochs,
                           eval_data=load_images("digits", RESOLUTION, split="test"), log=_log)
            save_weights(path, model, model_name=arch, num_classes=10, resolution=RESOLUTION,
                         extra={"accuracy": result.accuracy, "epochs": epochs, "seconds": round(result.seconds, 1),
                                "data": "digits"})
        model, meta = load_model(path)
        return model, {"weights": str(path), "float_accuracy_trained": meta.get("accuracy")}
    if lib == "torchvision":
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    elif lib == "timm":
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=10)
    else:
        raise ValueError(f"unknown model library {lib!r} in {spec!r}; valid: edge-se, torchvision, timm")
    return randomize_bn(model), {"weights": "random, randomised BatchNorm"}


def run_cell(model: nn.Module, calib: torch.Tensor, held, target: str, engine: str, policy: str) -> dict:  # noqa: ANN001
    """Quantise and evaluate one cell; the record of the JSON line."""
    from quantize.core import quantize_model
    from quantize.evaluate import evaluate

    start = time.perf_counter()
    qm = quantize_model(model, (calib[:1],), [calib], target=target, policy=policy, engine=engine,  # type: ignore[arg-type]
                        seed=0,
                        calib_size=CALIB_SIZE, calib_source="digits")
    seconds = time.perf_counter() - start
    figures = evaluate(qm, held.images, held.labels)
    return {"calibration": qm.calibration, "rewrites": qm.rewrites, "auto_steps": qm.steps,
            "se_blocks": len(qm.se_blocks), "quantize_seconds": round(seconds, 1), **figures}


def _fmt(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(records: list[dict]) -> str:
    """One row per measured cell: the figures the issue judges by, plus the failures."""
    head = ("| model | target | engine | policy | logits SQNR dB | median | worst | top-1 agree | accuracy "
            "| gate SQNR min dB | gate median | s |")
    lines = [head, "|" + "---|" * 12]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['target']} | {r['engine']} | {r['policy']} | failed: "
                         f"{r['error'][:80]} |||||||")
            continue
        lines.append(
            f"| {r['model']} | {r['target']} | {r['engine']} | {r['policy']} | {_fmt(r['sqnr_db'], '.1f')} "
            f"| {_fmt(r['sqnr_db_median'], '.1f')} | {_fmt(r['sqnr_db_worst'], '.1f')} "
            f"| {_fmt(r['top1_agreement'] * 100, '.1f')}% "
            f"| {_fmt(None if r['accuracy'] is None else r['accuracy'] * 100, '.1f')} "
            f"| {_fmt(r['gate_sqnr_db_min'], '.1f')} | {_fmt(r['gate_sqnr_db_median'], '.1f')} "
            f"| {r['quantize_seconds']} |"
        )
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--out", default="results/quant_bench.jsonl")
    parser.add_argument("--table", default="results/quant_bench.md")
    parser.add_argument("--weights-dir", default="results/weights")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    calib_pool = load_images("digits", RESOLUTION, split="train")
    calib = calib_pool.images
    held = load_images("digits", RESOLUTION, split="test")
    out = Path(args.out)
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {(r["model"], r["target"], r["engine"], r["policy"]) for r in records if "error" not in r}
    nncf_policies = set(args.nncf_policies.split(";"))
    for spec in args.models.split(","):
        model, weights = load_bench_model(spec, Path(args.weights_dir))
        for target in args.targets.split(","):
            for engine in args.engines.split(","):
                for policy in args.policies.split(";"):
                    if engine == "nncf" and policy not in nncf_policies:
                        continue
                    key = (spec, target, engine, policy)
                    if key in done:
                        continue
                    _log(f"bench-quant: {spec} {target} {engine} {policy}")
                    record: dict = {"model": spec, "target": target, "engine": engine, "policy": policy,
                                    "resolution": RESOLUTION, **weights}
                    try:
                        record.update(run_cell(model, calib, held, target, engine, policy))
                        _log(f"  -> sqnr {record['sqnr_db']:.1f} dB (worst {record['sqnr_db_worst']:.1f}), "
                             f"agree {record['top1_agreement']:.4f}, gate min {record['gate_sqnr_db_min']}")
                    except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the rest goes on
                        record["error"] = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        _log(traceback.format_exc(limit=3))
                    records = [r for r in records if (r["model"], r["target"], r["engine"], r["policy"]) != key]
                    records.append(record)
                    append_line(out, json.dumps(record))
                    write_text(args.table, markdown_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
