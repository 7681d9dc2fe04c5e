"""Choose edge-se's int8 float prefix for this CPU from measured profiles, and rebuild the int8 artifact with it.

For each (architecture, format): ``edge-se bench --profile`` on edge-se's own all-int8 and fp32
artifacts, on this machine, at every thread count the run times (one artifact serves them all),
both profiles summed per execution unit (:func:`device_bench.op_profile.unit_times`), the prefix
whose predicted latency relative to all-int8 is lowest on average over the thread counts
(:func:`device_bench.op_profile.prefix_gain`, :func:`~device_bench.op_profile.best_prefix`: none
unless it saves at least ``min_gain``), then ``edge-se export --dtype int8 --float-prefix N`` over
the all-int8 artifact. The choice is a property of the CPU: on one with VNNI the int8
kernels win everywhere and nothing is rebuilt; on an AVX2-only one the early layers stay fp32
(``quantize/float_prefix.py``). The timing that follows measures the rebuilt artifact itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.peers.proc import edge_se_cli, log, run_logged
from contract.formats import artifact_name
from device_bench.op_profile import PREFIX_MIN_GAIN, best_prefix, prefix_gain, trace_of, unit_times
from edge_se.errors import EdgeSeError

PROFILE_MEASURE = ["--runs", "50", "--warmup", "10", "--repeats", "1", "--cooldown", "0", "--min-seconds", "1"]
"""``edge-se bench`` flags of a profiling run (``--threads`` is added per run)."""


def _compute_units(arch: str, resolution: int) -> list[str]:
    import torch

    from edge_se.registry import build_model
    from quantize.core import export_graph
    from quantize.float_prefix import compute_units

    model = build_model(arch).eval()
    return compute_units(export_graph(model, (torch.zeros(1, 3, resolution, resolution),)))


def choose(out: Path, arch: str, fmt: str, units: list[str], *, threads: Sequence[int] = (1,),
           min_gain: float = PREFIX_MIN_GAIN) -> dict[str, Any]:
    """Profile edge-se's int8 and fp32 ``fmt`` artifacts of ``arch`` here; return the choice (``n``: 0 for none).

    ``units``: the unit of every convolution and linear layer of ``arch`` (:func:`_compute_units`);
    ``threads``: the thread counts profiled (those the run times the artifact at).

    Returns:
        ``{"n", "last_unit", "predicted_ms", "int8_ms", "fp32_ms", "threads", "by_threads", ...}``
        (operator sums in ms; the top-level figures are the first thread count's, ``by_threads``
        has every count's), or ``{"n": 0, "error": ...}`` where a step failed.
    """
    edge = out / "edge_se"
    arts = [edge / artifact_name(arch, fmt, dtype) for dtype in ("int8", "fp32")]
    manifest = arts[0].with_name(arts[0].name + ".json")
    if not manifest.exists() or not arts[1].exists():
        return {"n": 0, "error": "edge-se's int8 or fp32 artifact was not built"}
    kept = (json.loads(manifest.read_text()).get("quantization") or {}).get("float_prefix")
    tables, by_threads = [], {}
    for t in threads:
        bench_out = out / "float_prefix" / f"{arch}_{fmt}_{t}t.jsonl"
        # --reuse of a run that already chose: read the profiles it chose from (of the all-int8 artifact)
        # again; profiling the rebuilt artifact would take its prefix for all-int8.
        if kept and not bench_out.exists():
            return {"n": 0, "error": f"the int8 artifact already keeps {kept['count']} units fp32 (--reuse) and the "
                                     f"profiles it was chosen from are gone ({bench_out})"}
        if not kept:
            bench_out.parent.mkdir(parents=True, exist_ok=True)
            bench_out.unlink(missing_ok=True)  # edge-se bench appends
            rc, _, last = run_logged([edge_se_cli(), "bench", *map(str, arts), "--device", "local", *PROFILE_MEASURE,
                                      "--threads", str(t), "--profile", "--out", str(bench_out)],
                                     f"float prefix: profile {arch} .{fmt} at {t} thread(s)")
            if rc != 0:
                return {"n": 0, "error": f"edge-se bench --profile (threads {t}) exit {rc}: {last}"}
        records = {r["dtype"]: r for r in map(json.loads, bench_out.read_text().splitlines())
                   if r.get("status") == "ok"}
        try:
            per_unit = {d: unit_times(trace_of(records[d]), units) for d in ("int8", "fp32")}
        except (EdgeSeError, KeyError) as exc:
            return {"n": 0, "error": f"profiles not usable (threads {t}): {exc}"}
        rows = prefix_gain(per_unit["int8"], per_unit["fp32"])
        tables.append(rows)
        by_threads[str(t)] = {"int8_ms": rows[0]["predicted_ms"], "fp32_ms": sum(per_unit["fp32"].values()),
                              "rows": rows, "profile": str(bench_out)}
    best = best_prefix(*tables, min_gain=min_gain)
    for t, predicted in zip(threads, best["predicted_each_ms"], strict=True):
        by_threads[str(t)]["predicted_ms"] = predicted
    first = by_threads[str(threads[0])]
    choice = {"n": best["n"], "last_unit": best["last_unit"], "predicted_ms": first["predicted_ms"],
              "int8_ms": first["int8_ms"], "fp32_ms": first["fp32_ms"], "relative": best["relative"],
              "min_gain": min_gain, "threads": list(threads), "by_threads": by_threads}
    if kept:
        if int(kept["count"]) != best["n"]:
            return {"n": 0, "error": f"the int8 artifact keeps {kept['count']} units fp32, its profiles say "
                                     f"{best['n']} (--reuse of another run's artifact)"}
        choice.update(reused=True, rebuilt=True)
    return choice


def rebuild(out: Path, arch: str, fmt: str, n: int, *, weights: Path, seed: int) -> str | None:
    """``edge-se export`` the int8 ``fmt`` artifact again with ``--float-prefix n``; the error line, or None."""
    rc, _, last = run_logged([edge_se_cli(), "export", arch, "--format", fmt, "--dtype", "int8", "--calib", "random",
                              "--out", str(out / "edge_se"), "--weights", str(weights), "--seed", str(seed),
                              "--float-prefix", str(n)], f"float prefix: rebuild {arch} .{fmt}")
    return None if rc == 0 else f"edge-se export --float-prefix {n} exit {rc}: {last}"


def apply(out: Path, archs: list[str], formats: list[str], *, seed: int, resolution: int,
          threads: Sequence[int] = (1,)) -> dict[str, Any]:
    """Choose and rebuild for every (arch, format); the record the run's meta keeps under ``float_prefix``."""
    chosen: dict[str, Any] = {}
    for arch in archs:
        failed = "the network has no convolution or linear layer"
        try:
            units = _compute_units(arch, resolution)  # one graph export per architecture, for every format
        except EdgeSeError as exc:
            units, failed = [], f"profiles not usable: {exc}"
        for fmt in formats:
            choice = choose(out, arch, fmt, units, threads=threads) if units else {"n": 0, "error": failed}
            if choice["n"] and not choice.get("reused"):
                err = rebuild(out, arch, fmt, choice["n"], weights=out / "weights" / f"{arch}_random_bn.pt", seed=seed)
                choice["rebuilt"] = err is None
                if err:
                    choice["error"] = err  # the all-int8 artifact stays, and the table says which one was timed
            said = (f"N={choice['n']} (through {choice['last_unit']}): predicted {_per_threads(choice)}"
                    if choice["n"] else
                    choice.get("error", f"none (predicted saving below {100 * PREFIX_MIN_GAIN:.0f}%)"))
            log(f"float prefix: {arch} .{fmt}: {said}")
            chosen[f"{arch}/{fmt}"] = choice
    return chosen


def _per_threads(c: dict[str, Any]) -> str:
    """``9.15 vs 9.88 ms all-int8 (1T), 5.01 vs 5.10 ms (2T)``: predicted against all-int8 per thread count.

    Runs recorded before the choice covered several thread counts (no ``by_threads``) were 1 thread.
    """
    by = c.get("by_threads") or {"1": {"predicted_ms": c["predicted_ms"], "int8_ms": c["int8_ms"]}}
    return ", ".join(f"{v['predicted_ms']:.2f} vs {v['int8_ms']:.2f} ms all-int8 ({t}T)" for t, v in by.items())


def header_line(chosen: dict[str, Any]) -> str:
    """One markdown line on what was chosen, for the table's header."""
    parts = []
    counts: set[str] = set()
    for key, c in chosen.items():
        counts.update(str(t) for t in c.get("threads", [1]))
        if c.get("n"):
            what = f"{key}: first {c['n']} units fp32 (through {c['last_unit']}; predicted {_per_threads(c)}"
            what += f"; fp32 {c['fp32_ms']:.2f} ms)" if "by_threads" not in c else ")"
            if not c.get("rebuilt", True):
                what += f", rebuild failed: {c.get('error')}"
        elif c.get("error"):
            what = f"{key}: not chosen ({c['error']})"
        else:
            what = f"{key}: all int8"
        parts.append(what)
    at = " and ".join(sorted(counts, key=int)) or "1"
    return (f"edge-se int8 float prefix, chosen on this CPU from per-operator profiles at {at} thread(s) of "
            "edge-se's own all-int8 and fp32 artifacts, the lowest mean predicted latency relative to all-int8 "
            f"(`benchmarks/peers/float_prefix.py`): {'; '.join(parts)}.")
