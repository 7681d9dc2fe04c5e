"""The report's PNG plots (matplotlib, Agg backend). Each takes flat records and a path; None when no data."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.collect import pareto_front

_DPI = 110
_MARKERS = {"pte": "o", "tflite": "s"}
_COLORS = {"fp32": "tab:blue", "int8": "tab:orange"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    _plt().close(fig)
    return path


def _short(row: dict[str, Any]) -> str:
    pol = row.get("policy")
    return f"{row['model']} {row['format']} {row['dtype']}" + (f" {pol}" if pol not in (None, "-") else "")


def latency_vs_macs(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Measured latency (real devices) and instructions per inference (emulated) against MACs, labelled."""
    real = [r for r in rows if not r["emulated"] and r.get("p50_ms") and r.get("macs")]
    emu = [r for r in rows if r["emulated"] and r.get("instructions_per_inference") and r.get("macs")]
    if not real and not emu:
        return None
    plt = _plt()
    panels = [
        p
        for p in (
            (real, "p50_ms", "latency p50 (ms)"),
            (emu, "instructions_per_inference", "instructions / inference (emulated aarch64)"),
        )
        if p[0]
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, (data, key, ylabel) in zip(axes[0], panels, strict=True):
        for r in data:
            ax.scatter(
                r["macs"] / 1e6,
                r[key],
                marker=_MARKERS.get(r["format"], "x"),
                color=_COLORS.get(r["dtype"], "gray"),
                s=45,
            )
            ax.annotate(
                _short(r) + ("" if key != "p50_ms" else f" [{r['device']}]"),
                (r["macs"] / 1e6, r[key]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xlabel("MACs per image (millions)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=m, ls="", color="k", label=f) for f, m in _MARKERS.items()]
    handles += [plt.Line2D([], [], marker="o", ls="", color=c, label=d) for d, c in _COLORS.items()]
    axes[0][0].legend(handles=handles, fontsize=8, loc="upper left")
    fig.suptitle("Latency against MACs, one point per model x format x dtype x device")
    return _save(fig, path)


def fidelity_vs_latency(points: list[dict[str, Any]], path: Path) -> Path | None:
    """int8 fidelity (logits SQNR, top-1 agreement) against latency per policy, with the Pareto front."""
    pts = [p for p in points if p.get("p50_ms") and p.get("sqnr_db") is not None]
    if not pts:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, label in (
        (axes[0], "sqnr_db", "logits SQNR vs float (dB)"),
        (axes[1], "top1_agreement", "top-1 agreement with float (%)"),
    ):
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in pts:
            groups[f"{p['model']} {p['target']}"].append(p)
        for name, group in sorted(groups.items()):
            xs = [g["p50_ms"] for g in group]
            ys = [(g[key] * 100 if key == "top1_agreement" else g[key]) for g in group]
            ax.scatter(xs, ys, label=name, s=50)
            for g, x, y in zip(group, xs, ys, strict=True):
                ax.annotate(g["policy"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            front = pareto_front(list(zip(xs, ys, strict=True)))
            if len(front) > 1:
                ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", lw=1, alpha=0.7)
        ax.set_xlabel("latency p50 of the int8 artifact (ms, local)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Quantisation policies: fidelity against latency (dashed: Pareto front)")
    return _save(fig, path)


def gate_error(rows: list[dict[str, Any]], baseline: str, path: Path) -> Path | None:
    """Per-SE-block gate SQNR (dB) of each policy, one panel per model x target."""
    data = [r for r in rows if r.get("gate_error")]
    if not data:
        return None
    plt = _plt()
    panels = sorted({(r["model"], r["target"]) for r in data})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (model, target) in zip(axes[0], panels, strict=True):
        for r in sorted(
            (r for r in data if (r["model"], r["target"]) == (model, target)),
            key=lambda r: (r["policy"] != baseline, r["policy"]),
        ):
            ys = [g.get("sqnr_db") for g in r["gate_error"]]
            ax.plot(
                range(len(ys)),
                ys,
                marker="o",
                lw=2 if r["policy"] == baseline else 1.5,
                ls="--" if r["policy"] == baseline else "-",
                label=r["policy"],
            )
        ax.set_title(f"{model} ({target})", fontsize=10)
        ax.set_xlabel("SE block (forward order)")
        ax.set_ylabel("gate SQNR, int8 vs float (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Per-SE-block gate error: {baseline} (dashed) against the SE-aware policies")
    return _save(fig, path)


def se_cost(pairs: list[dict[str, Any]], path: Path) -> Path | None:
    """Params, MACs, artifact size and latency of each model relative to its no-SE twin (twin = 100%)."""
    if not pairs:
        return None
    plt = _plt()
    metrics = [("params", "params"), ("macs", "MACs"), ("size_bytes", "size"), ("p50_ms", "latency p50")]
    fig, ax = plt.subplots(figsize=(max(7, 2.2 * len(pairs) + 3), 4.8))
    width = 0.8 / len(metrics)
    for j, (key, label) in enumerate(metrics):
        vals = [
            100 * (p["se"][key] / p["nose"][key] - 1) if p["se"].get(key) and p["nose"].get(key) else 0.0 for p in pairs
        ]
        bars = ax.bar([i + j * width for i in range(len(pairs))], vals, width, label=label)
        ax.bar_label(bars, fmt="%+.1f%%", fontsize=7)
    ax.set_xticks([i + 1.5 * width for i in range(len(pairs))], [p["label"] for p in pairs], fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("SE model vs its no-SE twin (% more)")
    ax.set_title("What SE costs")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def compound_scaling(points: list[dict[str, Any]], path: Path) -> Path | None:
    """Params, MACs and latency against the compound coefficient phi."""
    pts = sorted((p for p in points if p.get("phi") is not None), key=lambda p: p["phi"])
    if len(pts) < 2:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    phis = [p["phi"] for p in pts]
    axes[0].plot(phis, [p["params"] / 1e6 for p in pts], "o-")
    axes[0].set_ylabel("parameters (millions)")
    axes[1].plot(phis, [p["macs"] / 1e6 for p in pts], "o-")
    axes[1].set_ylabel("MACs per image (millions)")
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for p in pts:
        for label, ms in p.get("latency", {}).items():
            series[label].append((p["phi"], ms))
    for label, xy in sorted(series.items()):
        axes[2].plot([x for x, _ in xy], [y for _, y in xy], "o-", label=label)
    axes[2].set_ylabel("latency p50 (ms, local)")
    if series:
        axes[2].legend(fontsize=7)
    for ax, p in zip(axes, pts[:1] * 3, strict=True):
        ax.set_xlabel(f"compound coefficient phi (at {p.get('resolution')} px)")
        ax.grid(alpha=0.3)
    fig.suptitle("Compound scaling: phi against cost")
    return _save(fig, path)
