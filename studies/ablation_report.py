"""The ablation's table, its verdict per literature claim, and the accuracy-vs-params plot.

Pure over the cell records of :mod:`studies.ablation_run` (plus one PNG written by matplotlib's
Agg backend, in the style of :mod:`pipeline.plots`). A difference is called *beyond the seed
spread* when it exceeds :data:`SPREAD_FACTOR` standard errors of the difference of two means,
``sqrt(s_a^2 / n_a + s_b^2 / n_b)``; with one seed there is no spread and no verdict.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from edge_se.tables import Column, fmt
from edge_se.tables import table as columns_table

SPREAD_FACTOR = 2.0
"""Standard errors a difference of mean accuracies must exceed to count as real (about 95 %)."""


def _agg(values: list[float]) -> tuple[float, float | None, int]:
    n = len(values)
    return statistics.fmean(values), (statistics.stdev(values) if n > 1 else None), n


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant (table order): accounting, accuracy mean/std/n, and the int8 figures."""
    rows: list[dict[str, Any]] = []
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["kind"] == "train":
            by_variant.setdefault(r["variant"], []).append(r)
    exports = {r["variant"]: r for r in records if r["kind"] == "export"}
    for name, cells in by_variant.items():
        first = cells[0]
        mean, std, n = _agg([c["accuracy"] for c in cells])
        row = {k: first[k] for k in ("variant", "axis", "also", "model", "ratio", "effective_ratio", "placement",
                                     "gate", "params", "macs", "se_params", "se_macs", "se_params_share",
                                     "se_macs_share", "se_blocks")}
        row |= {"accuracy_mean": mean, "accuracy_std": std, "n": n, "seeds": sorted(c["seed"] for c in cells),
                "accuracies": [c["accuracy"] for c in sorted(cells, key=lambda c: c["seed"])]}
        e = exports.get(name)
        for form in ("pte", "tflite"):
            f = (e or {}).get("formats", {}).get(form) or {}
            lat = f.get("latency") or {}
            fid = f.get("fidelity") or {}
            row[f"{form}_int8_p50_ms"] = lat.get("p50_ms")
            row[f"{form}_int8_unstable"] = bool(lat.get("unstable"))
            row[f"{form}_int8_sqnr_db"] = fid.get("sqnr_db")
            row[f"{form}_int8_top1_agreement"] = fid.get("top1_agreement")
            row[f"{form}_int8_accuracy"] = fid.get("accuracy")
            row[f"{form}_status"] = f.get("status", "not exported")
            row[f"{form}_policy"] = f.get("policy", "ptq") if f.get("status") == "ok" else None
        rows.append(row)
    return rows


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _ms(row: dict[str, Any], form: str) -> str:
    text = fmt(row[f"{form}_int8_p50_ms"], ".3f")
    if row.get(f"{form}_status") in ("error", "parity-failed"):
        return "failed"
    policy = row.get(f"{form}_policy")
    return text + ("*" if row.get(f"{form}_int8_unstable") else "") + (f" ({policy})" if policy not in (None, "ptq")
                                                                        else "")


def _rlabel(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return "-"
    eff = row["effective_ratio"]
    span = f"{eff[0]:g}" if eff[0] == eff[1] else f"{eff[0]:g}-{eff[1]:g}"
    return f"{row['ratio']:g} ({span})"


def _variant(r: dict[str, Any]) -> str:
    return r["variant"] + (f" (= {', '.join(r['also'])})" if r["also"] else "")


def _accuracy(r: dict[str, Any]) -> str:
    std = "n/a" if r["accuracy_std"] is None else f"{100 * r['accuracy_std']:.2f}"
    return f"{100 * r['accuracy_mean']:.2f} +- {std} ({r['n']})"


_COLUMNS = (
    Column("variant", _variant),
    Column("r nominal (effective)", _rlabel),
    Column("placement", lambda r: r["placement"] or "-"),
    Column("gate", lambda r: r["gate"] or "-"),
    Column("params", lambda r: f"{r['params']:,}", align="right"),
    Column("MACs", lambda r: f"{r['macs']:,}", align="right"),
    Column("SE share params / MACs %", lambda r: f"{_pct(r['se_params_share'])} / {_pct(r['se_macs_share'])}"),
    Column("accuracy % mean +- std (n)", _accuracy),
    Column("int8 p50 ms pte / tflite", lambda r: f"{_ms(r, 'pte')} / {_ms(r, 'tflite')}"),
    Column("int8 SQNR dB pte / tflite",
           lambda r: f"{fmt(r['pte_int8_sqnr_db'], '.1f')} / {fmt(r['tflite_int8_sqnr_db'], '.1f')}"),
    Column("int8 top-1 agreement % pte / tflite",
           lambda r: f"{_pct(r['pte_int8_top1_agreement'])} / {_pct(r['tflite_int8_top1_agreement'])}"),
)


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table, one line per variant."""
    return columns_table(_COLUMNS, rows)


def _find(rows: list[dict[str, Any]], label: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["variant"] == label or label in r["also"]), None)


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Mean accuracy of ``a`` minus ``b`` in points, the standard error of that difference, and a verdict."""
    delta = 100 * (a["accuracy_mean"] - b["accuracy_mean"])
    if a["accuracy_std"] is None or b["accuracy_std"] is None:
        return {"delta_points": delta, "se_points": None, "beyond_spread": None}
    se = 100 * math.sqrt(a["accuracy_std"] ** 2 / a["n"] + b["accuracy_std"] ** 2 / b["n"])
    return {"delta_points": delta, "se_points": se, "beyond_spread": abs(delta) > SPREAD_FACTOR * max(se, 1e-12)}


# (label a, label b, claim, expectation): "lower" a is worse than b; "equal" no real difference;
# "higher" a is better than b. Sources: Hu et al., SE paper (TPAMI 2019) Tables 10 and 14, Fig. 5;
# Howard et al., MobileNetV3 section 5.2 (hard-sigmoid); Hu et al. Table 2 (SE vs no SE).
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("base", "no-se", "SE improves accuracy over the no-SE twin (SE paper, Table 2)", "higher"),
    ("softmax", "sigmoid", "a softmax gate (channels compete for a fixed budget) is worse than sigmoid "
     "(SE paper, Table 13)", "lower"),
    ("hsigmoid", "sigmoid", "hard-sigmoid costs no accuracy against sigmoid (MobileNetV3, 5.2)", "equal"),
    ("pre", "standard", "SE-PRE matches the standard placement (SE paper, Table 14)", "equal"),
    ("identity", "standard", "SE-Identity matches the standard placement (SE paper, Table 14)", "equal"),
    ("post", "standard", "SE-POST, after the addition, is worse than standard (SE paper, Table 14)", "lower"),
    ("r16", "r4", "accuracy is robust to the reduction ratio: r=16 matches r=4 at fewer params "
     "(SE paper, Table 10)", "equal"),
    ("r32", "r4", "even r=32 stays close to r=4 (SE paper, Table 10)", "equal"),
)


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One verdict per literature claim whose two variants are in the study."""
    out = []
    for a_label, b_label, claim, expect in CLAIMS:
        a, b = _find(rows, a_label), _find(rows, b_label)
        if a is None or b is None or a is b:
            continue
        c = compare(a, b)
        d, real = c["delta_points"], c["beyond_spread"]
        if real is None:
            holds = None
        elif expect == "equal":
            holds = not real
        else:
            holds = real and (d > 0 if expect == "higher" else d < 0)
        spread = "n=1, no seed spread" if c["se_points"] is None else (
            f"{'beyond' if real else 'within'} the seed spread ({SPREAD_FACTOR:g} SE = "
            f"{SPREAD_FACTOR * c['se_points']:.2f} points)")
        verdict = {None: "cannot judge", True: "claim holds here", False: "claim does not hold here"}[holds]
        dparams = a["params"] - b["params"]
        out.append({"claim": claim, "a": a_label, "b": b_label, **c, "holds": holds, "params_delta": dparams,
                    "text": f"{a_label} vs {b_label}: {d:+.2f} points ({dparams:+,} params), {spread}: {verdict}. "
                            f"Claim: {claim}."})
    return out


def markdown(rows: list[dict[str, Any]], verdict_list: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The whole ``study_ablation.md``: what was run, the table, the verdicts, the notes."""
    cfg = header["config"]
    cpu = header.get("cpu") or {}
    parts = [
        "# SE ablation study",
        "",
        f"`{header['command']}`: {cfg['model']} on {cfg['data']} at {cfg['resolution']} px, {cfg['epochs']} epochs, "
        f"seeds 0..{cfg['seeds'] - 1}, Linear init `{cfg['init']}`, {cfg['threads']} thread(s); "
        f"held-out split: the dataset's test split ({header.get('held_out', '?')} images, the same for every cell).",
        f"CPU: {cpu.get('model', '?')} ({cpu.get('machine', '?')}, SIMD {' '.join(cpu.get('simd_flags', [])) or '?'}); "
        f"versions: {', '.join(f'{k} {v}' for k, v in header.get('versions', {}).items() if v)}.",
        "",
        table(rows),
        "",
        "Columns: **r** is the reduction ratio, SE input channels / reduced channels; nominal = 1 / `SESpec.ratio`, "
        "effective = the range over blocks after the family's rounding (MobileNetV3: `make_divisible(C / r, 8)`, "
        "never below 8). **SE share**: SE parameters (both FCs with biases) and MACs as % of the network's "
        "(edge_se.accounting). **accuracy**: float top-1 on the held-out split, mean +- sample std over seeds (n). "
        "**int8** columns: seed 0 only, exported through export.pipeline.export_one (plain PTQ, or the config's "
        "fallback policy where PTQ failed, named beside the latency; calibrated on the "
        f"training split); p50 latency on this host (`local`, {cfg['threads']} thread(s), all artifacts in one "
        "bench run; `*`: device_bench flagged the repeats unstable, their medians more than 5 % apart); "
        "SQNR of the artifact's logits against float and top-1 agreement, measured in the artifact's "
        "own runtime on the held-out split (the manifest's `fidelity`). `-`: not exported or not measured.",
        "",
        "## Verdicts",
        "",
        f"A difference counts when it exceeds {SPREAD_FACTOR:g} standard errors of the difference of the two means.",
        "",
        *[f"- {v['text']}" for v in verdict_list],
    ]
    if header.get("notes"):
        parts += ["", "## Notes", "", *[f"- {n}" for n in header["notes"]]]
    return "\n".join(parts) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy (mean +- std over seeds) against parameters, one labelled point per variant."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"base": "black", "no-se": "tab:gray", "ratio": "tab:blue", "placement": "tab:green",
              "gate": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        ax.errorbar(r["params"] / 1e6, 100 * r["accuracy_mean"],
                    yerr=None if r["accuracy_std"] is None else 100 * r["accuracy_std"], fmt="o", capsize=3,
                    color=colors.get(r["axis"], "tab:red"), ms=6)
        ax.annotate(r["variant"], (r["params"] / 1e6, 100 * r["accuracy_mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=a) for a, c in colors.items()]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel("held-out top-1 accuracy (%), mean +- std over seeds")
    ax.grid(alpha=0.3)
    ax.set_title("SE ablation: accuracy against parameters")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["CLAIMS", "SPREAD_FACTOR", "compare", "markdown", "plot", "summarize", "table", "verdicts"]
