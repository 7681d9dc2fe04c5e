"""What the SE-gate anomaly score costs and keeps on the device: ``python -m studies.anomaly_device``.

Issue 12, part C. Reuses (or trains) the digits MobileNetV3-Small of :mod:`studies.anomaly_bench`,
fits the gate statistics on the training split, and exports it plain and with ``--gate-outputs``
(stats embedded) in both formats and dtypes; the gated int8 artifact reuses the plain one's
``QuantizedModel``, so both carry the same quantisation. Then:

* **latency**: the on-device runner (:func:`device_bench.runner.measure`, one thread) times
  plain and gated artifacts alternately, ``--rounds`` times each, in one process; the figure is
  the median over rounds of each round's p50, and the cost is gated / plain - 1.
* **AUROC**: each gated int8 artifact runs in its own runtime on the held-out digits and every
  OOD set of :mod:`studies.ood`; its gate outputs are scored with
  :func:`device_bench.gate_score.score` and compared with the float model's score
  (:func:`studies.anomaly.gate_score`) on the same images.

Writes ``results/anomaly_device.md`` and ``results/anomaly_device.jsonl`` atomically. Issue targets:
on-device int8 AUROC within 0.01 of float; gate outputs cost <= 3% latency.

    python -m studies.anomaly_device [--seed 0] [--epochs 6] [--resolution 32] [--images 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import write_text
from edge_se.tables import Column, table

TARGET_AUROC_GAP = 0.01
TARGET_LATENCY_COST = 0.03


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cpu_flags() -> str:
    """The CPU model and its flags from /proc/cpuinfo (Linux), for the record."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    return f"{info.get('model name', 'unknown')}; flags: {info.get('flags', info.get('Features', ''))}"


def export_all(model: Any, stats: dict[str, Any], *, resolution: int, out: Path, seed: int) -> dict[tuple, dict]:
    """``{(fmt, dtype, gated): export record}`` of the 8 artifacts (plain and gated share one quantisation)."""
    from export.pipeline import ExportOptions, _quantize, export_one
    from quantize.calibration import load_calibration

    calib = load_calibration("digits", resolution, samples=64, seed=seed)
    weights = {"source": "file", "path": "studies.anomaly_bench cache"}
    plain = ExportOptions(resolution=resolution, seed=seed)
    gated = ExportOptions(resolution=resolution, seed=seed, gate_outputs=True, gate_stats=stats,
                          gate_stats_file="studies.anomaly.fit (in memory)")
    records: dict[tuple, dict] = {}
    for fmt in ("pte", "tflite"):
        for dtype in ("fp32", "int8"):
            quantized = None
            if dtype == "int8":
                import torch

                example = (torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed)),)
                quantized = _quantize(model.eval(), fmt, example, calib, plain)
            for is_gated, opts in ((False, plain), (True, gated)):
                t0 = time.perf_counter()
                rec = export_one(model, name="anomaly_mnv3s100", fmt=fmt, dtype=dtype,
                                 out_dir=out / ("gated" if is_gated else "plain"), opts=opts, calib=calib,
                                 weights=weights, quantized=quantized)
                _log(f"exported {fmt} {dtype} gated={is_gated} in {time.perf_counter() - t0:.0f} s")
                records[(fmt, dtype, is_gated)] = rec
    return records


def time_pair(plain: dict, gated: dict, *, rounds: int, runs: int) -> dict[str, Any]:
    """p50 of plain and gated artifacts, measured alternately ``rounds`` times each by the device runner."""
    from device_bench import runner

    p50: dict[bool, list[float]] = {False: [], True: []}
    gate_scores = []
    for r in range(rounds):
        order = (False, True) if r % 2 == 0 else (True, False)  # alternate which goes first
        for is_gated in order:
            rec = gated if is_gated else plain
            args = runner.build_parser().parse_args([rec["path"], "--manifest", rec["manifest"], "--runs", str(runs),
                                                     "--warmup", "20", "--min-seconds", "0.5", "--repeats", "1",
                                                     "--threads", "1"])
            result = runner.measure(args)
            p50[is_gated].append(float(result["p50_ms"]))
            if is_gated:
                gate_scores.append(result.get("gate_score"))
    plain_ms, gated_ms = statistics.median(p50[False]), statistics.median(p50[True])
    return {"plain_p50_ms": plain_ms, "gated_p50_ms": gated_ms, "cost": gated_ms / plain_ms - 1.0,
            "plain_p50s": p50[False], "gated_p50s": p50[True], "rounds": rounds, "runs": runs,
            "runner_gate_score": gate_scores[-1]}


def device_scores(rec: dict, images: Any, stats: dict[str, Any]) -> np.ndarray:
    """Gate scores [N] of a gated artifact's outputs, run in its own runtime one image at a time."""
    from contract.manifest import read_manifest
    from device_bench.gate_score import score
    from export import backends

    manifest = read_manifest(rec["path"])
    index = {b["name"]: b["output_index"] for b in manifest["gate_outputs"]["blocks"]}
    xs = [images[i : i + 1].numpy() for i in range(len(images))]
    if manifest.inputs[0].layout == "NHWC":
        xs = [np.ascontiguousarray(x.transpose(0, 2, 3, 1)) for x in xs]
    runs = backends.get(manifest.format).run_all(rec["path"], xs)
    gates = [np.concatenate([r[index[b["name"]]].reshape(1, -1) for r in runs]).astype(np.float64)
             for b in stats["blocks"]]
    return score(gates, stats)


def main(argv: list[str] | None = None) -> int:
    """Run the study; write the results files; print the table."""
    import torch

    from contract.provenance import git_commit
    from edge_se.data import load_images
    from export.versions import versions
    from studies.anomaly import auroc, fit, gate_score, gate_vectors
    from studies.anomaly_bench import CACHE, DATA, MODEL, trained_model
    from studies.ood import ood_sets

    p = argparse.ArgumentParser(prog="python -m studies.anomaly_device", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--init", default="recipe")
    p.add_argument("--images", type=int, default=200, help="images per OOD set")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per artifact pair")
    p.add_argument("--runs", type=int, default=200, help="timed inferences per round (at least 0.5 s)")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--out-dir", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    env = {"model": MODEL, "data": DATA, "resolution": args.resolution, "epochs": args.epochs, "seed": args.seed,
           "init": args.init, "threads": 1, "cpu": _cpu_flags(), "commit": git_commit(short=True),
           "versions": versions()}
    _log(json.dumps({"study": "anomaly_device", **{k: v for k, v in env.items() if k != "cpu"}}, default=str))
    model, meta, cached = trained_model(epochs=args.epochs, resolution=args.resolution, seed=args.seed,
                                        init=args.init, cache=args.cache)
    env |= {"weights_cached": cached, "accuracy": meta.get("accuracy")}
    train = load_images(DATA, args.resolution, split="train")
    test = load_images(DATA, args.resolution, split="test")
    stats = fit(gate_vectors(model, train.images), seed=args.seed, source=f"{DATA}/train")
    sets = ood_sets(DATA, args.resolution, n=args.images, seed=args.seed)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="anomaly_device_") as tmp:
        arts = export_all(model, stats, resolution=args.resolution, out=Path(tmp), seed=args.seed)
        for fmt in ("pte", "tflite"):
            for dtype in ("fp32", "int8"):
                _log(f"timing {fmt} {dtype}")
                t = time_pair(arts[(fmt, dtype, False)], arts[(fmt, dtype, True)], rounds=args.rounds,
                              runs=args.runs)
                records.append({**env, "kind": "latency", "format": fmt, "dtype": dtype, **t})
        float_id = gate_score(gate_vectors(model, test.images), stats)
        for fmt in ("pte", "tflite"):
            rec = arts[(fmt, "int8", True)]
            dev_id = device_scores(rec, test.images, stats)
            for name, images in sets.items():
                f_auc = auroc(float_id, gate_score(gate_vectors(model, images), stats))
                d_auc = auroc(dev_id, device_scores(rec, images, stats))
                records.append({**env, "kind": "auroc", "format": fmt, "dtype": "int8", "ood": name,
                                "float_auroc": f_auc, "device_auroc": d_auc, "gap": d_auc - f_auc,
                                "id_images": len(test.images), "ood_images": len(images)})
                _log(f"{fmt} int8 {name}: float {f_auc:.4f} device {d_auc:.4f}")
    write_text(args.out_dir / "anomaly_device.jsonl", "".join(json.dumps(r, default=str) + "\n"
                                                                      for r in records))
    md = render(records)
    write_text(args.out_dir / "anomaly_device.md", md)
    print(md)
    return 0


_LATENCY_COLUMNS = (
    Column("format", "format"), Column("dtype", "dtype"),
    Column("plain p50 ms", "plain_p50_ms", ".4f", "right"), Column("gated p50 ms", "gated_p50_ms", ".4f", "right"),
    Column("cost", lambda r: f"{100 * r['cost']:+.2f}%", align="right"),
    Column("rounds x runs", lambda r: f"{r['rounds']} x >= {r['runs']}", align="right"),
)
_AUROC_COLUMNS = (
    Column("format", "format"), Column("OOD set", "ood"),
    Column("float AUROC", "float_auroc", ".4f", "right"),
    Column("on-device int8 AUROC", "device_auroc", ".4f", "right"), Column("gap", "gap", "+.4f", "right"),
)


def render(records: list[dict[str, Any]]) -> str:
    """``results/anomaly_device.md``: settings, the latency table, the AUROC table, the targets."""
    first = records[0]
    lat = [r for r in records if r["kind"] == "latency"]
    auc = [r for r in records if r["kind"] == "auroc"]
    lines = ["# SE-gate anomaly score on the device: latency cost and int8 AUROC (issue 12, part C)", "",
             f"{first['model']} on {first['data']} at {first['resolution']} px, {first['epochs']} epochs, seed "
             f"{first['seed']}, init {first['init']} (float accuracy {first.get('accuracy')}, weights cached: "
             f"{first.get('weights_cached')}), 1 thread, commit {first['commit']}. Versions: "
             f"{json.dumps(first['versions'])}. Produced by `python -m studies.anomaly_device`.", "",
             f"CPU: {first['cpu'].split('; flags:')[0]} (flags in the .jsonl). The machine is shared (2 cores, "
             "other jobs running): p50s move between rounds; the per-round p50s are in the .jsonl.", "",
             "## Latency: plain vs gate outputs (median over alternating rounds of the runner's p50)", "",
             table(_LATENCY_COLUMNS, lat),
             "", "## AUROC: gate score from the int8 artifact's gate outputs (in its runtime) vs the float model",
             "", table(_AUROC_COLUMNS, auc)]
    worst_gap = max((abs(r["gap"]) for r in auc), default=float("nan"))
    worst_cost = max((r["cost"] for r in lat), default=float("nan"))
    lines += ["", f"Targets: int8 on-device AUROC within {TARGET_AUROC_GAP} of float: "
              f"{'met' if worst_gap <= TARGET_AUROC_GAP else 'NOT met'} (worst |gap| {worst_gap:.4f}); "
              f"gate outputs cost <= {100 * TARGET_LATENCY_COST:.0f}% latency: "
              f"{'met' if worst_cost <= TARGET_LATENCY_COST else 'NOT met'} (worst {100 * worst_cost:+.2f}%).", ""]
    return "\n".join(lines)


__all__ = ["device_scores", "export_all", "main", "render", "time_pair"]

if __name__ == "__main__":
    sys.exit(main())
