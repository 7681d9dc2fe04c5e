"""Time one sweep config with the local executor and with Ray, one after the other (``make bench-sweep``).

Each executor gets its own fresh run directory, so neither reuses the other's cache. Written:
``RESULTS.jsonl`` (one line per executor, one per bench cell) and ``RESULTS.md`` (wall time, cells
per minute, the two runs' p50 latency side by side per bench cell, and the CPU it ran on). Latency
is comparable only within one file: the CPU behind this machine kind changes between sessions.

    python scripts/bench_sweep.py --config configs/demo.toml --runs runs/bench_sweep --results results/bench_sweep

"Ray must not make timings noisier": per bench cell, the two p50s differ by no more than the
larger of the two runs' own repeat spread (``repeat_spread_pct``: the spread of the p50 over the
cell's repeats, measured in that run), and the median repeat spread under Ray is compared with
the local one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from contract.files import write_text
from device_bench.sysinfo import describe
from edge_se.tables import markdown_table

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
    p50, spread = {}, {}
    for cid, entry in cells.items():
        if entry.get("stage") != "bench" or entry.get("status") not in ("done", "cached"):
            continue
        result = json.loads((run_dir / "cells" / "bench" / entry["key"] / "result.json").read_text())
        p50[cid] = result.get("bench", {}).get("p50_ms")
        spread[cid] = result.get("bench", {}).get("repeat_spread_pct")
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
        "repeat_spread_pct": spread,
    }


def noise_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per bench cell timed in both of the first two runs: both p50s, their difference and the runs' spreads.

    ``within_noise``: the difference (% of the first run's p50) is at most the larger repeat spread.
    """
    if len(runs) < 2:
        return []
    a, b = runs[0], runs[1]
    rows = []
    for cid in sorted(set(a["p50_ms"]) & set(b["p50_ms"])):
        pa, pb = a["p50_ms"][cid], b["p50_ms"][cid]
        sa, sb = a["repeat_spread_pct"].get(cid), b["repeat_spread_pct"].get(cid)
        if pa is None or pb is None or sa is None or sb is None:
            continue
        diff = 100.0 * (pb - pa) / pa
        rows.append({"cell": cid, "p50_ms": [pa, pb], "diff_pct": diff, "spread_pct": [sa, sb],
                     "within_noise": abs(diff) <= max(sa, sb)})
    return rows


def write(results: Path, config: Path, runs: list[dict[str, Any]]) -> None:
    """``results``.jsonl and ``results``.md (each written whole, then renamed into place)."""
    system = describe() | {"cpu_flags": _flags()}
    results.parent.mkdir(parents=True, exist_ok=True)
    noise = noise_rows(runs)
    jsonl = [json.dumps({"config": str(config), "system": system} | r, sort_keys=True) for r in runs]
    jsonl += [json.dumps({"config": str(config), "compare": [r["executor"] for r in runs[:2]]} | n, sort_keys=True)
              for n in noise]
    write_text(results.with_suffix(".jsonl"), "\n".join(jsonl) + "\n")
    lines = [
        f"# Sweep executors: {config}",
        "",
        f"CPU: {system['cpu_model']} ({system['machine']}, {system['cpu_count']} logical CPUs); "
        f"flags: {system['cpu_flags']}.",
        "Each executor ran into its own fresh run directory, one after the other; timing cells on "
        "`local` ran with no other cell running under both.",
        "",
        markdown_table(["executor", "jobs", "wall (s)", "cells computed", "failed", "cells/min", "exit"],
                       [[r["executor"], str(r["jobs"]), str(r["wall_s"]), f"{r['computed']}/{r['cells']}",
                         str(r["failed"]), str(r["cells_per_min"]), str(r["exit"])] for r in runs]),
    ]
    if noise:
        names = [r["executor"] for r in runs[:2]]
        med = [statistics.median(n["spread_pct"][i] for n in noise) for i in (0, 1)]
        held = sum(n["within_noise"] for n in noise)
        lines += [
            "",
            f"p50 latency per bench cell (ms), {names[1]} against {names[0]}: a difference is within noise when it "
            "is no larger than the larger of the two runs' repeat spreads (the p50's spread over the cell's "
            f"repeats). {held} of {len(noise)} cells within noise; median repeat spread {med[0]:.1f}% "
            f"({names[0]}) vs {med[1]:.1f}% ({names[1]}).",
            "",
            markdown_table(
                ["cell", names[0], names[1], "difference", f"spread {names[0]}", f"spread {names[1]}", "within noise"],
                [[f"`{n['cell']}`", f"{n['p50_ms'][0]:.3f}", f"{n['p50_ms'][1]:.3f}", f"{n['diff_pct']:+.1f}%",
                  f"{n['spread_pct'][0]:.1f}%", f"{n['spread_pct'][1]:.1f}%", n["within_noise"]] for n in noise]),
        ]
    write_text(results.with_suffix(".md"), "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the config under each executor and write the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/demo.toml"), help="sweep config")
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
