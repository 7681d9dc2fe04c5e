"""Run the ablation's cells: train and evaluate each (variant, seed), export and time one seed per variant.

The I/O edge of the study. Every cell is cached in ``OUT/cells/{key}.json`` (written atomically:
temporary file + rename), keyed by the content that decides its numbers
(:func:`studies.ablation.cell_key`: spec, recipe, seed, toolchain versions; for export the
weights' sha256 too; for latency the artifacts' sha256, the measurement spec and the CPU), so a
rerun, or a run that was interrupted, resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from contract.files import sha256_file, write_text
from edge_se.accounting import count
from edge_se.errors import EdgeSeError, StageError, first_line
from studies.ablation import (
    STUDY_SCHEMA,
    StudyConfig,
    Variant,
    cell_key,
    effective_ratios,
    recipe,
    spec_json,
)

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_info() -> dict[str, Any]:
    """The host CPU as ``/proc/cpuinfo`` tells it: model, the SIMD flags that decide int8 speed, cores."""
    from device_bench.sysinfo import cpu_model

    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags = value.split()
                break
    except OSError:
        pass
    simd = sorted(f for f in flags if f.startswith(("avx", "sse4", "fma", "amx", "vnni", "asimd", "sve", "i8mm",
                                                       "dotprod", "neon")))
    return {"model": cpu_model(), "machine": platform.machine(), "simd_flags": simd,
            "logical_cpus": os.cpu_count()}


class CellCache:
    """JSON records under ``OUT/cells/``, one file per content key, written atomically."""

    def __init__(self, out: Path) -> None:
        self.root = out / "cells"
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record of ``key`` (None when absent or unreadable: then it is recomputed)."""
        path = self.root / f"{key}.json"
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self.misses += 1
            return None
        self.hits += 1
        return rec

    def put(self, key: str, rec: dict[str, Any]) -> dict[str, Any]:
        """Write ``rec`` under ``key`` (temporary file + rename) and return it."""
        write_text(self.root / f"{key}.json", json.dumps(rec, sort_keys=True, default=str) + "\n")
        return rec


def _versions() -> dict[str, str | None]:
    from export.versions import versions

    return versions()


def _accounting(v: Variant, resolution: int) -> dict[str, Any]:
    acc = count(v.spec, resolution)
    s = acc.summary()
    return {"params": s["params"], "macs": s["macs"], "se_params": s["se_params"], "se_macs": s["se_macs"],
            "se_blocks": s["se_blocks"], "se_params_share": s["se_params_share"], "se_macs_share": s["se_macs_share"]}


def _data(cfg: StudyConfig) -> tuple[Any, Any]:
    from edge_se.data import load_images

    # One fixed split for every variant and seed (seed 0), so accuracies are comparable cell to cell.
    return (load_images(cfg.data, cfg.resolution, split="train", seed=0),
            load_images(cfg.data, cfg.resolution, split="test", seed=0))


def train_cell(v: Variant, seed: int, cfg: StudyConfig, out: Path, cache: CellCache, data: Callable[[], Any],
               log: Log = _log) -> dict[str, Any]:
    """Train and evaluate ``v`` with ``seed`` (or read the cached cell); return its JSON record.

    The recipe is ``edge-se train``'s (edge_se/commands.py): seed torch, build, re-initialise the
    Linear layers with ``cfg.init``, :func:`edge_se.train.train`, :func:`edge_se.train.save_weights`.
    """
    versions = _versions()
    rec_in = {"spec": spec_json(v.spec), "recipe": recipe(cfg), "seed": seed,
              "versions": {k: versions[k] for k in ("torch", "edge_se")}}
    key = cell_key("train", rec_in)
    cached = cache.get(key)
    if cached is not None:
        return cached
    import torch

    from edge_se.network import build
    from edge_se.train import init_linear_layers, save_weights, train

    train_data, test_data = data()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    model = build(v.spec)
    init_linear_layers(model, cfg.init)
    log(f"study: train {v.name} seed {seed} ({cfg.epochs} epochs @ {cfg.resolution}px)")
    result = train(model, train_data, epochs=cfg.epochs, eval_data=test_data, lr=recipe(cfg)["lr"], seed=seed,
                   log=None)
    weights = out / "weights" / f"{v.spec.name}_{key}.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_weights(weights, model, model_name=v.spec.name, num_classes=len(train_data.classes),
                 resolution=cfg.resolution, extra={"study_cell": key, "seed": seed, "variant": v.name})
    rec = {
        "schema": STUDY_SCHEMA, "kind": "train", "key": key, "variant": v.name, "axis": v.axis, "also": list(v.also),
        "model": v.spec.name, "seed": seed, "ratio": v.ratio, "effective_ratio": effective_ratios(v.spec),
        "placement": v.placement, "gate": v.gate,
        **_accounting(v, cfg.resolution),
        "accuracy": result.accuracy, "train_accuracy": result.train_accuracy, "held_out": len(test_data),
        "train_images": len(train_data), "train_s": round(result.seconds, 1), "final_loss": result.losses[-1],
        "init": {"linear": cfg.init, "seed": seed}, "recipe": rec_in["recipe"], "versions": versions,
        "cpu": cpu_info(), "weights": str(weights), "weights_sha256": sha256_file(weights),
        "spec": rec_in["spec"],
    }
    log(f"study: {v.name} seed {seed}: accuracy {result.accuracy:.4f} ({result.seconds:.0f} s)")
    return cache.put(key, rec)


def export_cell(v: Variant, trained: dict[str, Any], cfg: StudyConfig, out: Path, cache: CellCache,
                calib: Callable[[], Any], log: Log = _log) -> dict[str, Any]:
    """int8 export of a trained cell in every ``cfg.formats`` (export.pipeline.export_one); cached."""
    versions = _versions()
    rec_in = {"weights_sha256": trained["weights_sha256"], "spec": trained["spec"], "formats": list(cfg.formats),
              "calib": {"source": cfg.data, "size": cfg.calib_size}, "resolution": cfg.resolution,
              "fallback_policy": cfg.fallback_policy, "versions": versions}
    key = cell_key("export", rec_in)
    cached = cache.get(key)
    if cached is not None:
        return cached
    import torch

    from edge_se.network import build
    from edge_se.train import load_state_dict
    from export.pipeline import ExportOptions, ParityFailure, export_one
    from quantize.policies import parse_policy

    torch.set_num_threads(cfg.threads)
    model = build(v.spec)
    model.load_state_dict(load_state_dict(trained["weights"]), strict=True)
    model.eval()
    art_dir = out / "artifacts" / key
    formats: dict[str, Any] = {}
    weights = {"source": "file", "path": trained["weights"], "sha256": trained["weights_sha256"],
               "study_cell": trained["key"]}
    policies = ["ptq"] + ([cfg.fallback_policy] if cfg.fallback_policy else [])
    for fmt in cfg.formats:
        failures: list[dict[str, str]] = []
        for policy in policies:
            log(f"study: export {v.name} {fmt} int8 ({policy})")
            t0 = time.perf_counter()
            opts = ExportOptions(resolution=cfg.resolution, seed=0, policy=parse_policy(policy))
            try:
                rec = export_one(model, name=v.spec.name, fmt=fmt, dtype="int8", out_dir=art_dir / policy,
                                 opts=opts, calib=calib(), weights=weights)
            except ParityFailure as exc:
                failures.append({"policy": policy, "status": "parity-failed", "error": str(exc)})
                continue
            except (StageError, EdgeSeError) as exc:  # e.g. LiteRT refuses an int8 softmax over channels
                failures.append({"policy": policy, "status": "error", "error": first_line(exc)})
                log(f"study: export {v.name} {fmt} int8 ({policy}) failed: {first_line(exc)}")
                continue
            fid = rec.get("fidelity") or {}
            formats[fmt] = {"status": "ok", "policy": policy, "artifact": rec["path"], "size_bytes": rec["size_bytes"],
                            "sha256": sha256_file(rec["path"]), "export_s": round(time.perf_counter() - t0, 1),
                            "fidelity": {k: fid.get(k) for k in ("sqnr_db", "sqnr_db_median", "top1_agreement",
                                                                 "accuracy", "float_accuracy", "images")},
                            "failed_policies": failures}
            break
        else:
            formats[fmt] = {**failures[0], "failed_policies": failures}
    rec = {"schema": STUDY_SCHEMA, "kind": "export", "key": key, "variant": v.name, "model": v.spec.name,
           "train_key": trained["key"], "seed": trained["seed"], "dtype": "int8", "formats": formats,
           "calib": rec_in["calib"], "versions": versions}
    return cache.put(key, rec)


def bench_cells(exports: list[dict[str, Any]], cfg: StudyConfig, out: Path, cache: CellCache,
                log: Log = _log) -> dict[str, dict[str, Any]]:
    """Local int8 latency of every exported artifact, the uncached ones side by side in one bench run.

    Returns:
        ``{artifact sha256: bench record}`` (device_bench's ``edge-se/bench/2`` fields plus ``cpu``).
    """
    from contract.measure import MeasureSpec

    measure = MeasureSpec(warmup=cfg.bench_warmup, runs=cfg.bench_runs, repeats=cfg.bench_repeats,
                          min_seconds=0.2, cooldown_s=0.2, threads=cfg.threads)
    cpu = cpu_info()
    arts = [(f["sha256"], f["artifact"]) for e in exports for f in e["formats"].values() if f.get("status") == "ok"]
    keys = {sha: cell_key("bench", {"artifact_sha256": sha, "measure": measure.to_dict(), "cpu": cpu,
                                    "device": "local"}) for sha, _ in arts}
    found: dict[str, dict[str, Any]] = {}
    todo = []
    for sha, path in arts:
        hit = cache.get(keys[sha])
        if hit is not None:
            found[sha] = hit
        else:
            todo.append((sha, path))
    if todo:
        from device_bench.bench import bench
        from device_bench.transports.base import RunOptions

        log(f"study: bench {len(todo)} int8 artifact(s) on local, side by side")
        records = bench([p for _, p in todo], ["local"], {}, RunOptions(measure=measure), out / "bench.jsonl")
        for (sha, _), rec in zip(todo, records, strict=True):
            found[sha] = cache.put(keys[sha], {**rec, "kind": "bench", "key": keys[sha], "cpu": cpu,
                                               "artifact_sha256": sha})
    return found


def run_study(cfg: StudyConfig, variants: list[Variant], out: Path, *, log: Log = _log) -> list[dict[str, Any]]:
    """Every cell of the study; return the JSON records (train, then export with its latency)."""
    cache = CellCache(out)
    memo: dict[str, Any] = {}

    def data() -> Any:
        if "data" not in memo:
            memo["data"] = _data(cfg)
        return memo["data"]

    def calib() -> Any:
        if "calib" not in memo:
            from quantize.calibration import load_calibration

            memo["calib"] = load_calibration(cfg.data, cfg.resolution, samples=cfg.calib_size, seed=0)
        return memo["calib"]

    # The registry spec has ImageNet's 1000 classes; every cell's spec (its key, its counts) has the data's.
    classes = len(data()[0].classes)
    variants = [replace(v, spec=v.spec.with_(num_classes=classes)) for v in variants]
    records = [train_cell(v, s, cfg, out, cache, data, log) for v in variants for s in range(cfg.seeds)]
    if cfg.export:
        exports = []
        chosen = [v for v in variants if cfg.export_variants is None
                  or {v.name, *v.also} & set(cfg.export_variants)]
        for v in chosen:
            first = next(r for r in records if r["variant"] == v.name and r["seed"] == 0)
            exports.append(export_cell(v, first, cfg, out, cache, calib, log))
        latency = bench_cells(exports, cfg, out, cache, log)
        for e in exports:
            for f in e["formats"].values():
                b = latency.get(f.get("sha256", ""))
                if b is not None:
                    f["latency"] = {k: b.get(k) for k in ("status", "p50_ms", "p90_ms", "min_ms", "threads",
                                                          "unstable", "device", "key")}
        records += exports
    log(f"study: {cache.hits} cell(s) from the cache, {cache.misses} computed")
    return records


__all__ = ["CellCache", "bench_cells", "cpu_info", "export_cell", "run_study", "train_cell"]
