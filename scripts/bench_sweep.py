"""Time one sweep config with the local executor and with Ray, one after the other (``make bench-sweep``).

Each run gets its own fresh run directory, so neither reuses the other's cache. Written:
``RESULTS.jsonl`` (one line per executor, one per bench cell) and ``RESULTS.md`` (wall time, cells
per minute, the two runs' p50 latency side by side per bench cell, and the CPU it ran on). Latency
is comparable only within one file: the CPU behind this machine kind changes between sessions.

    python scripts/bench_sweep.py --config configs/demo.toml --runs runs/bench_sweep --results results/bench_sweep

"Ray must not make timings noisier": per bench cell, the two p50s differ by no more than the
run-to-run noise, the larger of the two runs' own repeat spreads (``repeat_spread_pct``: the
spread of the p50 over the cell's repeats) and, when the first executor runs again last (the
default order ``local,ray,local``), the difference between its two runs; the median |difference|
ray vs local is set beside the median |difference| local vs local.
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
from device_bench.sysinfo import system_line, system_record
from edge_se.tables import markdown_table

EXECUTORS = ("local", "ray", "local")  # the second local run measures the run-to-run noise


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


def _rerun(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A later run with the first run's executor (its rerun), or None."""
    return next((r for r in runs[2:] if r["executor"] == runs[0]["executor"]), None)


def noise_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per bench cell timed in both of the first two runs: both p50s, their difference and the runs' spreads.

    ``rerun_diff_pct``: the first executor's rerun against its first run (% of the first p50), when
    there is a rerun. ``within_noise``: the difference (% of the first run's p50) is at most the
    larger repeat spread or the rerun's |difference|.
    """
    if len(runs) < 2:
        return []
    a, b, again = runs[0], runs[1], _rerun(runs)
    rows = []
    for cid in sorted(set(a["p50_ms"]) & set(b["p50_ms"])):
        pa, pb = a["p50_ms"][cid], b["p50_ms"][cid]
        sa, sb = a["repeat_spread_pct"].get(cid), b["repeat_spread_pct"].get(cid)
        if pa is None or pb is None or sa is None or sb is None:
            continue
        diff = 100.0 * (pb - pa) / pa
        pc = again["p50_ms"].get(cid) if again else None
        rerun = 100.0 * (pc - pa) / pa if pc is not None else None
        rows.append({"cell": cid, "p50_ms": [pa, pb], "diff_pct": diff, "spread_pct": [sa, sb],
                     "rerun_p50_ms": pc, "rerun_diff_pct": rerun,
                     "within_noise": abs(diff) <= max(sa, sb, abs(rerun) if rerun is not None else 0.0)})
    return rows


def write(results: Path, config: Path, runs: list[dict[str, Any]]) -> None:
    """``results``.jsonl and ``results``.md (each written whole, then renamed into place)."""
    system = system_record()
    results.parent.mkdir(parents=True, exist_ok=True)
    noise = noise_rows(runs)
    jsonl = [json.dumps({"config": str(config), "system": system} | r, sort_keys=True) for r in runs]
    jsonl += [json.dumps({"config": str(config), "compare": [r["executor"] for r in runs[:2]]} | n, sort_keys=True)
              for n in noise]
    write_text(results.with_suffix(".jsonl"), "\n".join(jsonl) + "\n")
    lines = [
        f"# Sweep executors: {config}",
        "",
        f"CPU: {system_line(system)}.",
        f"Runs, in order: {', '.join(r['executor'] for r in runs)}; each into its own fresh run directory; "
        "timing cells on `local` ran with no other cell running under every executor.",
        "",
        markdown_table(["executor", "jobs", "wall (s)", "cells computed", "failed", "cells/min", "exit"],
                       [[r["executor"], str(r["jobs"]), str(r["wall_s"]), f"{r['computed']}/{r['cells']}",
                         str(r["failed"]), str(r["cells_per_min"]), str(r["exit"])] for r in runs]),
    ]
    if noise:
        names = [r["executor"] for r in runs[:2]]
        med = [statistics.median(n["spread_pct"][i] for n in noise) for i in (0, 1)]
        held = sum(n["within_noise"] for n in noise)
        reruns = [n["rerun_diff_pct"] for n in noise if n["rerun_diff_pct"] is not None]
        med_diff = statistics.median(abs(n["diff_pct"]) for n in noise)
        rerun_line = (f" Median |difference| {names[1]} vs {names[0]}: {med_diff:.1f}%; {names[0]} run again last "
                      f"vs its first run: {statistics.median(abs(d) for d in reruns):.1f}% (the run-to-run noise)."
                      if reruns else f" Median |difference|: {med_diff:.1f}%.")
        cols = ["cell", names[0], names[1], "difference", f"spread {names[0]}", f"spread {names[1]}"]
        cols += [f"{names[0]} again", "rerun difference"] if reruns else []
        body = []
        for n in noise:
            row = [f"`{n['cell']}`", f"{n['p50_ms'][0]:.3f}", f"{n['p50_ms'][1]:.3f}", f"{n['diff_pct']:+.1f}%",
                   f"{n['spread_pct'][0]:.1f}%", f"{n['spread_pct'][1]:.1f}%"]
            if reruns:
                row += ["-", "-"] if n["rerun_p50_ms"] is None else [f"{n['rerun_p50_ms']:.3f}",
                                                                      f"{n['rerun_diff_pct']:+.1f}%"]
            body.append([*row, n["within_noise"]])
        lines += [
            "",
            f"p50 latency per bench cell (ms), {names[1]} against {names[0]}: a difference is within noise when it "
            "is no larger than the run-to-run noise: the larger of the two runs' repeat spreads (the p50's spread "
            f"over the cell's repeats) and the |difference| between {names[0]}'s two runs. {held} of {len(noise)} "
            f"cells within noise; median repeat spread {med[0]:.1f}% ({names[0]}) vs {med[1]:.1f}% ({names[1]})."
            + rerun_line,
            "",
            markdown_table([*cols, "within noise"], body),
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
    executors = args.executors.split(",")
    for i, executor in enumerate(executors):
        n = executors[:i].count(executor)
        runs.append(run_one(args.config, executor, args.runs / (executor if not n else f"{executor}-{n + 1}"),
                            args.jobs))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "p50_ms"}), flush=True)
    write(args.results, args.config, runs)
    print(f"bench-sweep: wrote {args.results.with_suffix('.md')}", file=sys.stderr)
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
