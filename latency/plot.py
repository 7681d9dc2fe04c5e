"""The Pareto plot of ``edge-se scale``: MACs against latency, the grid, the measured candidates, B0-B7, the budget."""

from __future__ import annotations

import io
from pathlib import Path

from contract.files import write_bytes
from edge_se.accounting import count
from edge_se.registry import get_spec
from latency.search import SearchResult
from latency.table import LatencyTable


def pareto(result: SearchResult, table: LatencyTable, path: Path) -> Path:
    """Draw the search and write it atomically as PNG.

    Every grid point predicted (grey), the measured candidates (a line from predicted to measured),
    the published B0-B7 at their own resolutions (predicted), the chosen network and the budget line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter([c.macs / 1e6 for c in result.grid], [c.predicted_ms for c in result.grid], s=6, c="0.75",
               label=f"grid, predicted ({len(result.grid)})")
    timed = [(c.macs / 1e6, c.predicted_ms, c.measured_ms) for c in result.measured if c.measured_ms is not None]
    for macs, predicted, measured in timed:
        ax.plot([macs, macs], [predicted, measured], c="tab:blue", lw=0.8)
    ax.scatter([t[0] for t in timed], [t[2] for t in timed], s=28,
               c="tab:blue", label=f"measured ({len(timed)})", zorder=3)
    for i in range(8):
        spec = get_spec(f"efficientnet_b{i}")
        macs = count(spec, spec.resolution).macs / 1e6
        ms = table.predict(spec, spec.resolution)
        ax.scatter([macs], [ms], marker="x", c="tab:green", zorder=3, label="B0-B7, predicted" if i == 0 else None)
        ax.annotate(f"B{i}", (macs, ms), textcoords="offset points", xytext=(4, 4), fontsize=8, color="tab:green")
    c = result.chosen
    if c is not None and c.measured_ms is not None:
        ax.scatter([c.macs / 1e6], [c.measured_ms], s=120, facecolors="none", edgecolors="tab:red", lw=2,
                   label=f"chosen: {c.name} @ {c.resolution} px", zorder=4)
    ax.axhline(result.budget_ms, c="tab:red", ls="--", lw=1, label=f"budget {result.budget_ms:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel(f"latency (ms), {table.describe()}")
    ax.set_title("Compound scaling under a latency budget")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


__all__ = ["pareto"]
