"""The table printed at the end of ``edge-se run``: one line per artifact, latency per device."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pipeline.collect import artifact_rows, bench_rows, load_cells


def format_summary(run_dir: str | Path) -> str:
    """Artifacts with size, parity and p50 latency on each device, then the cell counts."""
    res = load_cells(run_dir)
    lat: dict[str, dict[str, str]] = defaultdict(dict)
    devices: list[str] = []
    for b in bench_rows(res):
        if b["device"] not in devices:
            devices.append(b["device"])
        if b["emulated"] and b.get("instructions_per_inference"):
            lat[b["id"]][b["device"]] = f"{b['instructions_per_inference'] / 1e6:.1f}M instr"
        elif b.get("p50_ms") is not None:
            lat[b["id"]][b["device"]] = f"{b['p50_ms']:.2f} ms"
    head = ["model", "format", "dtype", "policy", "size KiB", "parity"] + devices
    rows = [
        [
            a["model"],
            a["format"],
            a["dtype"],
            str(a["policy"]),
            f"{(a['size_bytes'] or 0) / 1024:.0f}",
            {True: "pass", False: "FAIL", None: "-"}[a["parity_passed"]],
        ]
        + [lat[a["id"]].get(d, "-") for d in devices]
        for a in sorted(artifact_rows(res), key=lambda a: (a["model"], a["format"], a["dtype"], str(a["policy"])))
    ]
    widths = (
        [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)] if rows else [len(h) for h in head]
    )
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    counts: dict[str, int] = defaultdict(int)
    for e in res.index.get("cells", {}).values():
        counts[e.get("status", "?")] += 1
    lines.append(
        "cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; {res.index.get('seconds', '?')} s"
    )
    for cid, e in res.index.get("cells", {}).items():
        if e.get("status") in ("failed", "blocked"):
            lines.append(f"  {e['status']}: {cid}: {e.get('error')}")
    return "\n".join(lines)
