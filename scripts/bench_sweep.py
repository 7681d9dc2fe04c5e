"""Time one sweep config with the local executor and with Ray, one after the other (``make bench-sweep``).

Each executor gets its own fresh run directory, so neither reuses the other's cache. Written:
``RESULTS.jsonl`` (one line per executor, one per bench cell) and ``RESULTS.md`` (wall time, cells
per minute, the two runs' p50 latency side by side per bench cell, and the CPU it ran on). Latency
is comparable only within one file: the CPU behind this machine kind changes between sessions.

    python scripts/bench_sweep.py --config configs/smoke.toml --runs runs/bench_sweep --results results/bench_sweep
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from device_bench.sysinfo import describe

EXECUTORS = ("local", "ray")


def _flags() -> str:
    """The CPU flags that decide int8 speed here (AVX2, AVX-512, VNNI), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(line.partition(":")[2].split())
    keep = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")) or "vnni" in f)
    return " ".join(keep) or "-"


def run_one(config: Path, executor: str, run_dir: Path, jobs: int | None) -> dict[str, Any]:
    """``edge-se run CONFIG --executor EXECUTOR`` into a fresh ``run_dir``; its wall time and per-cell results."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "edge_se.cli", "run", str(config), "--out", str(run_dir), "--executor", executor]
    cmd += ["--no-report"] + (["--jobs", str(jobs)] if jobs else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    wall_s = time.perf_counter() - t0
    index = json.loads((run_dir / "index.json").read_text()) if (run_dir / "index.json").is_file() else {}
    cells = index.get("cells", {})
    computed = [e for e in cells.values() if e.get("status") in ("done", "failed")]
    p50 = {}
    for cid, entry in cells.items():
        if entry.get("stage") != "bench" or entry.get("status") not in ("done", "cached"):
            continue
        result = json.loads((run_dir / "cells" / "bench" / entry["key"] / "result.json").read_text())
        p50[cid] = result.get("bench", {}).get("p50_ms")
    return {
        "executor": executor,
        "jobs": index.get("executor", {}).get("jobs"),
        "exit": proc.returncode,
        "wall_s": round(wall_s, 1),
        "cells": len(cells),
        "computed": len(computed),
        "failed": sum(e["status"] == "failed" for e in cells.values()),
        "cells_per_min": round(len(computed) / (wall_s / 60), 2) if wall_s else None,
        "timing": index.get("timing"),
        "p50_ms": p50,
    }


def write(results: Path, config: Path, runs: list[dict[str, Any]]) -> None:
    """``results``.jsonl and ``results``.md."""
    system = describe() | {"cpu_flags": _flags()}
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results.with_suffix(".jsonl"), "w") as f:
        for r in runs:
            f.write(json.dumps({"config": str(config), "system": system} | r, sort_keys=True) + "\n")
    lines = [
        f"# Sweep executors: {config}",
        "",
        f"CPU: {system['cpu_model']} ({system['machine']}, {system['cpu_count']} logical CPUs); "
        f"flags: {system['cpu_flags']}.",
        "Each executor ran into its own fresh run directory, one after the other; timing cells on "
        "`local` ran with no other cell running under both.",
        "",
        "| executor | jobs | wall (s) | cells computed | failed | cells/min | exit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['executor']} | {r['jobs']} | {r['wall_s']} | {r['computed']}/{r['cells']} | {r['failed']} "
            f"| {r['cells_per_min']} | {r['exit']} |"
        )
    lines += ["", "p50 latency per bench cell (ms):", "", "| cell | " + " | ".join(r["executor"] for r in runs) + " |"]
    lines.append("|---" * (len(runs) + 1) + "|")
    for cid in sorted({c for r in runs for c in r["p50_ms"]}):
        vals = [r["p50_ms"].get(cid) for r in runs]
        lines.append(f"| `{cid}` | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the config under each executor and write the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/smoke.toml"), help="sweep config")
    p.add_argument("--runs", type=Path, default=Path("runs/bench_sweep"), help="parent of the two run directories")
    p.add_argument("--results", type=Path, default=Path("results/bench_sweep"), help="results stem (.md, .jsonl)")
    p.add_argument("--jobs", type=int, default=None, help="cells at once (default: the usable cores)")
    p.add_argument("--executors", default=",".join(EXECUTORS), help="comma-separated executors, in order")
    args = p.parse_args(argv)
    runs = []
    for executor in args.executors.split(","):
        runs.append(run_one(args.config, executor, args.runs / executor, args.jobs))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "p50_ms"}), flush=True)
    write(args.results, args.config, runs)
    print(f"bench-sweep: wrote {args.results.with_suffix('.md')}", file=sys.stderr)
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
