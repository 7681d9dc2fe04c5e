"""Read a run directory's finished cells into flat records for tables and plots.

:func:`load_cells` is the only I/O here; everything else is a pure function of its records. Bench
and baseline lines are read through :func:`contract.bench.read_record` (flat ``edge-se/bench/2``;
cached ``edge-se/bench/1`` lines are upgraded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.bench import read_record
from edge_se.errors import EdgeSeError


@dataclass
class RunResults:
    """Every finished cell's result, by stage, plus the index of the run."""

    run_dir: Path
    index: dict[str, Any]
    by_stage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def stage(self, name: str) -> list[dict[str, Any]]:
        """Results of one stage (empty if none finished)."""
        return self.by_stage.get(name, [])


def load_cells(run_dir: str | Path) -> RunResults:
    """Load ``index.json`` and the result of every cell it lists as done or cached."""
    root = Path(run_dir)
    index_path = root / "index.json"
    if not index_path.is_file():
        raise EdgeSeError(f"{str(root)!r} is not an edge-se run directory (no index.json); run `edge-se run` first")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgeSeError(f"{index_path}: not valid JSON ({exc.msg})") from None
    out = RunResults(run_dir=root, index=index)
    for cell_id, entry in index.get("cells", {}).items():
        if entry.get("status") not in ("done", "cached"):
            continue
        path = root / "cells" / entry["stage"] / entry["key"] / "result.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        result["id"] = cell_id
        result["dir"] = str(path.parent)
        out.by_stage.setdefault(entry["stage"], []).append(result)
    return out


def _p(result: dict[str, Any], key: str, default: Any = None) -> Any:
    return result.get("params", {}).get(key, default)


def delegation_share(manifest: dict[str, Any]) -> float | None:
    """Share (0..1) of the graph's operators that run inside the delegate, from the manifest's summary."""
    d = manifest.get("delegation") or {}
    for key in ("delegated_share", "share", "delegated_fraction"):
        if isinstance(d.get(key), (int, float)):
            return float(d[key])
    delegated, outside = d.get("delegated_ops"), d.get("non_delegated_ops")
    count = lambda v: sum(v.values()) if isinstance(v, dict) else (v if isinstance(v, int) else None)  # noqa: E731
    n_in, n_out = count(delegated), count(outside)
    if n_in is None or n_out is None or n_in + n_out == 0:
        return None
    return n_in / (n_in + n_out)


def _ops_text(ops: Any) -> str:
    """``{"HARD_SWISH": 14}`` -> ``"HARD_SWISH x14"``; ``{}`` -> ``"none"``; not known -> ``"-"``."""
    from export.partitions import ops_text

    if not isinstance(ops, dict):
        return "-"
    return ops_text(dict(sorted(ops.items()))) or "none"


def partition_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """Partitions, operators outside the delegate and float operators inside an int8 graph, from the manifest.

    ``float_in_int8`` is ``None`` for an fp32 artifact (every operator is float there).
    """
    rep = manifest.get("partitions")
    if not isinstance(rep, dict) or "error" in rep:
        return {"partitions": None, "outside_delegate": "-", "float_in_int8": "-"}
    floats = rep.get("float_ops_in_int8")
    return {
        "partitions": rep.get("partitions"),
        "outside_delegate": _ops_text(rep.get("ops_outside_delegate")),
        "float_in_int8": None if floats is None else _ops_text(floats),
    }


def artifact_rows(res: RunResults) -> list[dict[str, Any]]:
    """One row per exported artifact: model, format, dtype, policy, size, checksum, parity, delegation, cost."""
    info = {r["model"]: r["accounting"] for r in res.stage("info")}
    rows = []
    for r in res.stage("export"):
        m = r.get("manifest", {})
        parity = m.get("parity") or r.get("export", {}).get("parity") or {}
        acc = info.get(r["model"], {})
        rows.append(
            {
                "id": r["id"],
                "model": r["model"],
                "base": r.get("meta", {}).get("base", r["model"]),
                "twin": bool(r.get("meta", {}).get("twin")),
                "format": _p(r, "format"),
                "dtype": _p(r, "dtype"),
                "policy": _p(r, "policy"),
                "resolution": m.get("resolution", r.get("meta", {}).get("resolution")),
                "size_bytes": m.get("size_bytes"),
                "sha256": m.get("sha256"),
                "parity_passed": parity.get("passed"),
                "parity": parity,
                "delegation_share": delegation_share(m),
                **partition_fields(m),
                "int8_rewrites": (m.get("quantization") or {}).get("int8_rewrites"),
                "params": m.get("params", acc.get("params")),
                "macs": m.get("macs", acc.get("macs")),
                "artifact": str(Path(r["dir"]) / r["artifact"]),
            }
        )
    return rows


def bench_rows(res: RunResults) -> list[dict[str, Any]]:
    """One row per (artifact, device) benchmark, joined with the artifact's row."""
    by_export = {row["id"]: row for row in artifact_rows(res)}
    rows = []
    for r in res.stage("bench"):
        b = read_record(r["bench"], f"{r['dir']}/result.json: bench")
        export_id = "/".join(["export", r["model"], _p(r, "format"), _p(r, "dtype"), str(_p(r, "policy"))])
        art = by_export.get(export_id, {})
        rows.append(
            art
            | {
                "device": _p(r, "device"),
                "emulated": bool(b.get("emulated")),
                "p50_ms": b.get("p50_ms"),
                "p90_ms": b.get("p90_ms"),
                "min_ms": b.get("min_ms"),
                "unstable": b.get("unstable"),
                "stability": b.get("stability"),
                "cv_pct": b.get("cv_pct"),
                "p99_p50": b.get("p99_p50"),
                "instructions_per_inference": b.get("instructions_per_inference"),
                "threads": b.get("threads"),
                "profile": r.get("profile"),  # edge-se bench --profile's line ([bench].profile), else None
            }
        )
    return rows


def quant_rows(res: RunResults) -> list[dict[str, Any]]:
    """One row per int8 artifact with its fidelity, as measured on the artifact (its manifest's ``fidelity``).

    ``target`` is the artifact's format (the quantiser is the format's). Run directories written
    before fidelity moved into the artifact hold ``quantize`` cells: their metrics are read too.
    """
    rows = []
    for r in res.stage("export"):
        if _p(r, "dtype") == "int8" and isinstance(r.get("metrics"), dict):
            rows.append(_quant_row(r["model"], _p(r, "format"), _p(r, "policy"), r["metrics"]))
    for r in res.stage("quantize"):
        rows.append(_quant_row(r["model"], _p(r, "target"), _p(r, "policy"), r.get("metrics", {})))
    return rows


def _quant_row(model: str, target: str, policy: str, m: dict[str, Any]) -> dict[str, Any]:
    keys = ("top1_agreement", "accuracy", "float_accuracy", "cosine", "sqnr_db", "sqnr_db_median", "sqnr_db_worst",
            "gate_sqnr_db_min")
    return {"model": model, "target": target, "policy": policy, **{k: m.get(k) for k in keys},
            "gate_error": m.get("gate_error") or []}


def _runtime_name(value: Any) -> Any:
    """A runtime recorded as ``{"name": ..., "version": ...}`` shown as ``name version``."""
    if isinstance(value, dict):
        return " ".join(str(value[k]) for k in ("name", "version") if value.get(k))
    return value


def baseline_rows(res: RunResults) -> list[dict[str, Any]]:
    """Desktop PyTorch baselines, one row per measured configuration (skips recorded as such)."""
    rows = []
    for r in res.stage("baseline"):
        # the compile cell's first calls (the cold compile, made while other cells shared the machine)
        cold = {(w.get("dtype"), w.get("batch")): w.get("first_call_ms") for w in r.get("warm", [])}
        for i, raw in enumerate(r.get("baseline", [])):
            line = read_record(raw, f"{r['dir']}/result.json: baseline[{i}]")
            cache = line.get("compile_cache") or {}
            rows.append(
                {
                    "model": r["model"],
                    "device": line.get("device", _p(r, "device")),
                    "dtype": line.get("dtype"),
                    "batch": line.get("batch"),
                    "mode": _runtime_name(line.get("mode") or line.get("runtime")),
                    "p50_ms": line.get("p50_ms"),
                    "first_call_ms": line.get("first_inference_ms"),
                    # every FX graph loaded from the cache the compile cell filled: nothing compiled here
                    "from_cache": bool(cache.get("hits")) and not cache.get("misses"),
                    "cold_first_call_ms": cold.get((line.get("dtype"), line.get("batch")))
                    if cache else None,
                    "skipped": line.get("skipped") or (line.get("reason") if line.get("status") == "skipped" else None),
                    "gpu": line.get("gpu_name"),
                }
            )
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower x (latency) and higher y (fidelity)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front
