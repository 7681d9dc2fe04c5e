"""What the SE-gate anomaly score costs and keeps on the device: ``python -m studies.anomaly_device``.

Issue 12, part C. Reuses (or trains) the digits MobileNetV3-Small of :mod:`studies.anomaly_bench`,
fits the gate statistics on the training split, and exports it plain and with ``--gate-outputs``
(stats embedded) in both formats and dtypes; the gated int8 artifact reuses the plain one's
``QuantizedModel``, so both carry the same quantisation. Then:

* **latency**: plain and gated artifacts (every gate layout: one output per SE block, the
  default, every gate in one concatenated output, and one int8 output per block) are timed by the
  on-device runner (Python, and for ``.pte`` also native), one thread, in alternating blocks in one
  process (:func:`time_paired`); the cost
  is the median over blocks of the paired ratio gated / plain - 1. At the study's resolution and
  at 224 px (the deployment size; the weights are resolution-agnostic), since a fixed per-output
  cost weighs differently on a 0.1 ms and a 5 ms inference.
  int8 under each of ``--int8-policies``: the first (``ptq``) with every layout, the others
  (``gate-fixed``: every gate on the 1/256 grid, so the default layout packs them into one int8
  output, :mod:`export.gate_outputs`) with the default layout.
* **AUROC**: each gated int8 artifact (default layout, each int8 policy) runs in its own runtime on the held-out
  digits and every OOD set of :mod:`studies.ood`; its gate outputs are scored with
  :func:`device_bench.gate_score.score` and compared with the float model's score
  (:func:`studies.anomaly.gate_score`) on the same images, with a paired-bootstrap 95% interval of
  the gap (:func:`gap_ci`); for both block combinations (``max-z``, what the fit ships, and
  ``sum-z``) on the same distances; and with two sets of statistics for the device: the float
  model's (``--gate-stats``) and the artifact's own, fitted on its gate outputs over the training
  split in its runtime (what ``--gate-fit`` ships).

Writes ``results/anomaly_device.md`` and ``results/anomaly_device.jsonl`` atomically. Issue targets:
on-device int8 AUROC within 0.01 of float; gate outputs cost <= 3% latency.

    python -m studies.anomaly_device [--seed 0] [--epochs 6] [--resolution 32] [--images 200] [--blocks 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from contract.files import sha256_file, write_text
from device_bench.gate_score import COMBINES
from device_bench.sysinfo import cpu_flags, cpu_model
from edge_se.tables import Column, table

LAYOUTS = ("separate", "concat", "quantized")
TARGET_AUROC_GAP = 0.01
TARGET_LATENCY_COST = 0.03


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def export_all(model: Any, stats: dict[str, Any], *, resolution: int, out: Path, seed: int,
               layouts: tuple[str, ...] = ("concat",), batchnorm_here: bool = False, policy: str = "ptq",
               dtypes: tuple[str, ...] = ("fp32", "int8")) -> dict[tuple, dict]:
    """``{(fmt, dtype, layout): export record}``, layout ``None`` for the plain artifact.

    Per format and dtype: the plain artifact and one gated artifact per layout
    (:data:`export.gate_outputs.LAYOUTS`); the int8 ones share one ``QuantizedModel`` (int8
    ``policy``), so they carry the same quantisation. ``batchnorm_here``: export a copy whose BatchNorm statistics are
    re-estimated on the calibration images at ``resolution`` (:func:`export.sources.reestimate_batchnorm`),
    for a latency-only resolution the weights were not trained at: at 224 px the 32 px statistics
    put the activations out of range and the int8 export check refuses the artifact (measured:
    1 dB logits SQNR); the graph, and so the latency, is the same.
    """
    import copy

    from export.pipeline import ExportOptions, _quantize, export_one
    from export.sources import reestimate_batchnorm
    from quantize.calibration import load_calibration

    calib = load_calibration("digits", resolution, samples=64, seed=seed)
    if batchnorm_here:
        model = copy.deepcopy(model)
        reestimate_batchnorm(model, calib.batches)
    weights = {"source": "file", "path": "studies.anomaly_bench cache"}
    plain = ExportOptions(resolution=resolution, seed=seed, policy=(policy,))
    variants: list[tuple[str | None, ExportOptions]] = [(None, plain)]
    variants += [(layout, ExportOptions(resolution=resolution, seed=seed, policy=(policy,), gate_outputs=True,
                                        gate_stats=stats, gate_stats_file="studies.anomaly.fit (in memory)",
                                        gate_layout=layout))
                 for layout in layouts]
    records: dict[tuple, dict] = {}
    for fmt in ("pte", "tflite"):
        for dtype in dtypes:
            quantized = None
            if dtype == "int8":
                import torch

                example = (torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed)),)
                quantized = _quantize(model.eval(), fmt, example, calib, plain)
            for layout, opts in variants:
                t0 = time.perf_counter()
                rec = export_one(model, name="anomaly_mnv3s100", fmt=fmt, dtype=dtype,
                                 out_dir=out / f"r{resolution}" / policy / (layout or "plain"), opts=opts, calib=calib,
                                 weights=weights, quantized=quantized)
                _log(f"exported {fmt} {dtype} {resolution} px {policy} {layout or 'plain'} in "
                     f"{time.perf_counter() - t0:.0f} s")
                records[(fmt, dtype, layout)] = rec
    return records


def export_policies(model: Any, stats: dict[str, Any], policies: list[str], *, resolution: int, out: Path,
                    seed: int, batchnorm_here: bool = False,
                    layouts: tuple[str, ...] = LAYOUTS) -> dict[tuple, dict]:
    """``{(fmt, dtype, layout, policy): export record}`` (policy None for fp32, layout None for plain).

    The first policy gets every layout in ``layouts`` and the fp32 artifacts too; each further
    policy its int8 artifacts with the default layout (``concat``) only, as a user ships them.
    """
    arts: dict[tuple, dict] = {}
    for i, policy in enumerate(policies):
        got = export_all(model, stats, resolution=resolution, out=out, seed=seed,
                         layouts=layouts if i == 0 else ("concat",), batchnorm_here=batchnorm_here, policy=policy,
                         dtypes=("fp32", "int8") if i == 0 else ("int8",))
        # Each artifact's hash, read once: pairs timed twice under different labels are found by it.
        arts |= {(fmt, dtype, layout, policy if dtype == "int8" else None): {**rec, "sha256": sha256_file(rec["path"])}
                 for (fmt, dtype, layout), rec in got.items()}
    return arts


def time_paired(gated: dict, plain: dict, *, runner: str, blocks: int, runs: int, seed: int = 0) -> dict[str, Any]:
    """The gated artifact's latency cost over its plain twin, timed paired in one on-device runner process.

    ``runner``: ``"python"`` (``python -m device_bench.runner``: the artifact's Python runtime) or
    ``"native"`` (the C++ runner of :mod:`device_bench.native_build`, ``.pte`` only: what a board
    runs; the Python bindings hand every output back as an array, a per-output cost a board does not
    pay). Either loads both artifacts and times them with ``--paired-with`` on the same seeded inputs,
    1 thread: ``blocks`` repeats, each one block of ``runs`` inferences per artifact, which goes first
    alternating, no cool-down. The cost is :func:`device_bench.stats.paired_ratio`'s median over blocks
    of gated p50 / plain p50 - 1 (its quartiles - 1 beside it), so drift of this shared machine cancels
    within a pair and no process-to-process difference (memory layout, a cold start) enters.
    ``runner_gate_score``: the runner's score of the gated artifact's last timed inference.
    """
    import subprocess

    from device_bench.stats import paired_ratio

    if runner == "native":
        from device_bench.native_build import build

        cmd = [str(build("host"))]
    else:
        cmd = [sys.executable, "-m", "device_bench.runner"]
    cmd += [gated["path"], "--manifest", gated["manifest"], "--paired-with", plain["path"],
            "--paired-manifest", plain["manifest"], "--runs", str(runs), "--warmup", str(max(20, runs // 10)),
            "--min-seconds", "0", "--repeats", str(blocks), "--cooldown", "0", "--threads", "1", "--seed", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(f"{runner} runner --paired-with failed: {out.stderr.strip()[-300:]}")
    rec = json.loads(out.stdout)
    pr = paired_ratio(rec)
    return {"plain_p50_ms": pr["paired_p50_ms"], "gated_p50_ms": pr["p50_ms"], "cost": pr["ratio"] - 1.0,
            "cost_q1": pr["ratio_q1"] - 1.0, "cost_q3": pr["ratio_q3"] - 1.0,
            "plain_p50s": [r["p50_ms"] for r in rec["paired"]["repeats"]],
            "gated_p50s": [r["p50_ms"] for r in rec["repeats"]], "blocks": blocks, "runs": runs,
            "method": "paired alternating blocks in one runner process (--paired-with)", "runner": runner,
            "outputs": len(rec["outputs"]), "runner_gate_score": rec.get("gate_score")}


def gap_ci(float_id: np.ndarray, float_ood: np.ndarray, dev_id: np.ndarray, dev_ood: np.ndarray, *,
           resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% paired-bootstrap interval of the AUROC gap (device - float) over the same images.

    Each resample draws the in-distribution and the OOD images with replacement and scores both
    models on that same draw, so the interval is the gap's own sampling spread, not each AUROC's.
    """
    from studies.anomaly import auroc

    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(resamples):
        i = rng.integers(0, len(float_id), len(float_id))
        o = rng.integers(0, len(float_ood), len(float_ood))
        gaps.append(auroc(dev_id[i], dev_ood[o]) - auroc(float_id[i], float_ood[o]))
    lo, hi = np.quantile(gaps, [0.025, 0.975])
    return float(lo), float(hi)


def device_gates(rec: dict, images: Any, names: list[str]) -> list[np.ndarray]:
    """Gate vectors (one float64 [N, C] array per block in ``names`` order) of a gated artifact, in its runtime.

    One image at a time, read from the outputs by the manifest's slots
    (:func:`device_bench.gate_score.stacked_gate_arrays`), as the on-device runner reads them.
    """
    from contract.manifest import read_manifest
    from device_bench.gate_score import stacked_gate_arrays
    from export import backends

    manifest = read_manifest(rec["path"])
    slots = manifest["gate_outputs"]["blocks"]
    xs = [images[i : i + 1].numpy() for i in range(len(images))]
    if manifest.inputs[0].layout == "NHWC":
        xs = [np.ascontiguousarray(x.transpose(0, 2, 3, 1)) for x in xs]
    gates = stacked_gate_arrays(backends.get(manifest.format).run_all(rec["path"], xs), slots,
                                quant=manifest.output_quant)  # int8 gate outputs read with their scale
    return [gates[n] for n in names]


def device_scores(rec: dict, images: Any, stats: dict[str, Any]) -> np.ndarray:
    """Gate scores [N] of a gated artifact's outputs, run in its own runtime one image at a time."""
    from device_bench.gate_score import score

    return score(device_gates(rec, images, [b["name"] for b in stats["blocks"]]), stats)


def main(argv: list[str] | None = None) -> int:
    """Run the study; write the results files; print the table."""
    import torch

    from contract.provenance import git_commit
    from device_bench.gate_score import score
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
    p.add_argument("--blocks", type=int, default=30, help="alternating timing blocks per artifact pair")
    p.add_argument("--runs", type=int, default=400,
                   help="timed inferences per block at 32 px (scaled by (32 / resolution)^2, at least 10)")
    p.add_argument("--int8-policies", default="ptq,gate-fixed",
                   help="int8 policies: the first with every layout (and the fp32 artifacts), each other one "
                        "int8 with the default layout only")
    p.add_argument("--native-blocks", type=int, default=61,
                   help="alternating native-runner blocks per .pte pair, of 5 x --runs inferences (scaled as --runs)")
    p.add_argument("--latency-resolutions", type=int, nargs="+", default=[32, 224],
                   help="resolutions the latency cost is measured at (the weights are resolution-agnostic)")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--out-dir", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    env = {"model": MODEL, "data": DATA, "resolution": args.resolution, "epochs": args.epochs, "seed": args.seed,
           "init": args.init, "threads": 1, "cpu": f"{cpu_model()}; flags: {cpu_flags()}",
           "commit": git_commit(short=True), "versions": versions()}
    _log(json.dumps({"study": "anomaly_device", **{k: v for k, v in env.items() if k != "cpu"}}, default=str))
    model, meta, cached = trained_model(epochs=args.epochs, resolution=args.resolution, seed=args.seed,
                                        init=args.init, cache=args.cache)
    env |= {"weights_cached": cached, "accuracy": meta.get("accuracy")}
    train = load_images(DATA, args.resolution, split="train")
    test = load_images(DATA, args.resolution, split="test")
    stats = fit(gate_vectors(model, train.images), seed=args.seed, source=f"{DATA}/train")
    sets = ood_sets(DATA, args.resolution, n=args.images, seed=args.seed)
    records: list[dict[str, Any]] = []
    policies = [x for x in args.int8_policies.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="anomaly_device_") as tmp:
        for res in args.latency_resolutions:
            arts = export_policies(model, stats, policies, resolution=res, out=Path(tmp), seed=args.seed,
                                   batchnorm_here=res != args.resolution)
            for (fmt, dtype, layout, policy), gated in arts.items():
                if layout is None:
                    continue
                plain = arts[(fmt, dtype, None, policy)]
                _log(f"timing {fmt} {dtype} {res} px {policy or ''} {layout}")
                t = time_paired(gated, plain, runner="python", blocks=args.blocks,
                                runs=max(10, int(args.runs * (32 / res) ** 2)), seed=args.seed)
                bn = ("trained" if res == args.resolution else
                      f"re-estimated on 64 digits at {res} px (latency only)")
                row = {**env, "kind": "latency", "format": fmt, "dtype": dtype, "latency_resolution": res,
                       "layout": layout, "policy": policy, "batchnorm": bn,
                       "plain_sha256": plain["sha256"], "gated_sha256": gated["sha256"]}
                records.append({**row, **t})
                if fmt == "pte":
                    t = time_paired(gated, plain, runner="native", blocks=args.native_blocks,
                                    runs=max(50, int(5 * args.runs * (32 / res) ** 2)), seed=args.seed)
                    records.append({**row, **t})
                _log("  cost " + ", ".join(f"{r['runner']} {100 * r['cost']:+.2f}% (IQR {100 * r['cost_q1']:+.1f}.."
                                           f"{100 * r['cost_q3']:+.1f}%)" for r in records[-(1 + (fmt == "pte")):]))
            if res == args.resolution:
                scored = arts
                records += [{**env, "kind": "fidelity", "format": fmt, "dtype": dtype, "policy": policy,
                             "layout": layout, **(rec.get("fidelity") or {}), "artifact_sha256": rec["sha256"]}
                            for (fmt, dtype, layout, policy), rec in arts.items() if dtype == "int8" and layout is None]
        if args.resolution not in args.latency_resolutions:
            scored = export_policies(model, stats, policies, resolution=args.resolution, out=Path(tmp),
                                     seed=args.seed, layouts=("concat",))
        names = [b["name"] for b in stats["blocks"]]
        float_id_gates = gate_vectors(model, test.images)
        float_ood_gates = {name: gate_vectors(model, images) for name, images in sets.items()}
        for fmt in ("pte", "tflite"):
            for policy in policies:
                rec = scored[(fmt, "int8", "concat", policy)]
                own = fit(dict(zip(names, device_gates(rec, train.images, names), strict=True)), seed=args.seed,
                          source=f"{DATA}/train: the {fmt} int8 artifact's gate outputs (--gate-fit)")
                dev_id_gates = device_gates(rec, test.images, names)
                # (where the device's statistics were fitted, combine) -> float and device statistics; the
                # fitted combination first, the other on the same distances. In-distribution scores once each.
                variants = {(fitted_on, how): ({**stats, "combine": how}, {**dev_stats, "combine": how})
                            for fitted_on, dev_stats in (("float model", stats), ("artifact (--gate-fit)", own))
                            for how in COMBINES}
                id_scores = {key: (gate_score(float_id_gates, st), score(dev_id_gates, dst))
                             for key, (st, dst) in variants.items()}
                for name, images in sets.items():
                    d_gates = device_gates(rec, images, names)
                    for (fitted_on, how), (st, dst) in variants.items():
                        f_id, d_id = id_scores[(fitted_on, how)]
                        f_ood, d_ood = gate_score(float_ood_gates[name], st), score(d_gates, dst)
                        f_auc, d_auc = auroc(f_id, f_ood), auroc(d_id, d_ood)
                        lo, hi = gap_ci(f_id, f_ood, d_id, d_ood, seed=args.seed)
                        records.append({**env, "kind": "auroc", "format": fmt, "dtype": "int8", "ood": name,
                                        "policy": policy, "stats_fitted_on": fitted_on,
                                        "combine": how, "fitted_combine": how == stats["combine"],
                                        "float_auroc": f_auc, "device_auroc": d_auc, "gap": d_auc - f_auc,
                                        "gap_ci95": [lo, hi], "id_images": len(test.images),
                                        "ood_images": len(images)})
                        _log(f"{fmt} int8 {policy} {name} {how} stats on {fitted_on}: "
                             f"float {f_auc:.4f} device {d_auc:.4f}")
    write_text(args.out_dir / "anomaly_device.jsonl", "".join(json.dumps(r, default=str) + "\n"
                                                                      for r in records))
    md = render(records)
    write_text(args.out_dir / "anomaly_device.md", md)
    print(md)
    return 0


_LATENCY_COLUMNS = (
    Column("format", "format"), Column("dtype", "dtype"), Column("px", "latency_resolution", "d", "right"),
    Column("int8 policy", lambda r: r.get("policy") or "-"),
    Column("runner", lambda r: r.get("runner", "python")),
    Column("gate layout", lambda r: f"{r['layout']} ({r['outputs']} outputs)"),
    Column("plain p50 ms", "plain_p50_ms", ".4f", "right"), Column("gated p50 ms", "gated_p50_ms", ".4f", "right"),
    Column("cost", lambda r: f"{100 * r['cost']:+.2f}%", align="right"),
    Column("cost IQR", lambda r: f"{100 * r['cost_q1']:+.1f}..{100 * r['cost_q3']:+.1f}%", align="right"),
    Column("blocks x runs", lambda r: f"{r['blocks']} x {r['runs']}", align="right"),
)
_AUROC_COLUMNS = (
    Column("format", "format"), Column("int8 policy", lambda r: r.get("policy", "ptq")),
    Column("stats fitted on", lambda r: r.get("stats_fitted_on", "float model")), Column("OOD set", "ood"),
    Column("combine", lambda r: r.get("combine", "sum-z") + (" (fitted)" if r.get("fitted_combine", True) else "")),
    Column("float AUROC", "float_auroc", ".4f", "right"),
    Column("on-device int8 AUROC", "device_auroc", ".4f", "right"), Column("gap", "gap", "+.4f", "right"),
    Column("gap 95% CI", lambda r: f"{r['gap_ci95'][0]:+.4f}..{r['gap_ci95'][1]:+.4f}" if r.get("gap_ci95") else "-",
           align="right"),
)


_FIDELITY_COLUMNS = (
    Column("format", "format"), Column("int8 policy", "policy"),
    Column("logits SQNR dB", "sqnr_db", ".2f", "right"), Column("worst image dB", "sqnr_db_worst", ".2f", "right"),
    Column("top-1 agreement", "top1_agreement", ".4f", "right"), Column("accuracy", "accuracy", ".4f", "right"),
    Column("float accuracy", "float_accuracy", ".4f", "right"),
    Column("gate SQNR min dB", "gate_sqnr_db_min", ".2f", "right"), Column("images", "images", "d", "right"),
    Column("artifact sha256", lambda r: r["artifact_sha256"][:12]),
)


def _repeats(lat: list[dict[str, Any]]) -> list[str]:
    """Lines on pairs timed twice (the same plain and gated bytes under two labels): the run's noise floor."""
    seen: dict[tuple, list[dict[str, Any]]] = {}
    for r in lat:
        if "gated_sha256" in r:
            seen.setdefault((r["runner"], r["latency_resolution"], r["plain_sha256"], r["gated_sha256"]), []).append(r)
    lines = []
    for rows in seen.values():
        if len(rows) > 1:
            costs = ", ".join(f"{100 * r['cost']:+.2f}% ({r['layout']}{', ' + r['policy'] if r.get('policy') else ''})"
                              for r in rows)
            first = rows[0]
            lines.append(f"- {first['format']} {first['dtype']} {first['latency_resolution']} px, "
                         f"{first['runner']} runner: {costs}")
    if not lines:
        return []
    return ["", "The same plain and gated bytes timed twice in this run under two labels (fp32 `quantized` is "
            "`separate`; `.tflite` int8 is the same graph under both policies): the difference between the two "
            "figures is the run's noise for one cost figure.", "", *lines]


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
             f"CPU: {first['cpu'].split('; flags:')[0]} (flags in the .jsonl). The machine is shared (2 cores): "
             "each pair is timed in alternating blocks in one process and the cost is the median of the paired "
             "per-block ratios (IQR beside it); the per-block medians are in the .jsonl.", "",
             "## Latency: plain vs gate outputs (median over alternating blocks of the paired ratio)", "",
             "Rows at a resolution other than the training one time the same graph with BatchNorm statistics "
             "re-estimated there (`batchnorm` in the .jsonl): latency only; their AUROC is not measured.", "",
             table(_LATENCY_COLUMNS, lat),
             *_repeats(lat),
             "", "## Fidelity of each plain int8 artifact (manifest `fidelity`: held-out digits, in its runtime)", "",
             table(_FIDELITY_COLUMNS, [r for r in records if r["kind"] == "fidelity"]),
             "", "## AUROC: gate score from the int8 artifact's gate outputs (in its runtime) vs the float model",
             "", table(_AUROC_COLUMNS, auc)]
    lines += ["", f"Targets: int8 on-device AUROC within {TARGET_AUROC_GAP} of float (the fitted combination; a "
              "positive gap is int8 scoring better), per int8 policy and where the shipped statistics were fitted:",
              ""]
    fitted = [r for r in auc if r.get("fitted_combine", True)]  # the score the artifact ships with is judged

    def shipped_as(r: dict[str, Any]) -> tuple[str, str]:  # records before the policies: ptq, float statistics
        return r.get("policy", "ptq"), r.get("stats_fitted_on", "float model")

    for key in dict.fromkeys(shipped_as(r) for r in fitted):
        rows = [r for r in fitted if shipped_as(r) == key]
        worst_gap = max(abs(r["gap"]) for r in rows)
        worst_loss = min(r["gap"] for r in rows)
        verdict = "met" if worst_gap <= TARGET_AUROC_GAP else "NOT met"
        lines.append(f"- `{key[0]}`, statistics of the {key[1]}: {verdict} (worst |gap| {worst_gap:.4f}; "
                     f"worst loss {worst_loss:+.4f}).")
    lines += ["", f"Gate outputs cost <= {100 * TARGET_LATENCY_COST:.0f}% latency, in the runtime a device runs (.pte "
              "in the native runner, .tflite in LiteRT), per layout and int8 policy over every format, dtype and "
              "size above (fp32 rows count for every policy):", ""]
    int8_policies = list(dict.fromkeys(r["policy"] for r in lat if r.get("policy"))) or ["ptq"]
    for layout in dict.fromkeys(r.get("layout", "concat") for r in lat):
        for policy in int8_policies:
            shipped = [r for r in lat if r.get("layout", "concat") == layout and r.get("policy") in (None, policy)
                       and r.get("runner", "python") == ("native" if r["format"] == "pte" else "python")]
            if not any(r.get("policy") == policy for r in shipped):
                continue
            worst = max(shipped, key=lambda r: r["cost"])
            verdict = "met" if worst["cost"] <= TARGET_LATENCY_COST else "NOT met"
            where = f"{worst['format']} {worst['dtype']} at {worst['latency_resolution']} px"
            lines.append(f"- `{layout}`{' (the default)' if layout == 'concat' else ''}, int8 `{policy}`: {verdict} "
                         f"(worst {100 * worst['cost']:+.2f}%, {where}).")
    return "\n".join(lines + [""])


__all__ = ["device_gates", "device_scores", "export_all", "export_policies", "gap_ci", "main", "render",
           "time_paired"]

if __name__ == "__main__":
    sys.exit(main())
