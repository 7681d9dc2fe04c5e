"""``edge-se report RUN_DIR``: report.md and a self-contained report.html (images embedded) with PNG plots.

Sections: (1) latency vs MACs, (2) int8 fidelity vs latency per policy with the Pareto front,
(3) per-SE-block gate error, (4) what SE costs against the no-SE twin, (5) compound scaling,
(6) every artifact with size, parity, delegation share and checksum; plus the desktop baselines.
Every figure comes from the run's measured results; a section with no data says what to run.
"""

from __future__ import annotations

import base64
import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.files import write_text
from device_bench import op_profile
from edge_se import tables
from edge_se.registry import NOSE_SUFFIX
from edge_se.tables import Column, fmt
from pipeline import plots
from pipeline.collect import RunResults, artifact_rows, baseline_rows, bench_rows, load_cells, quant_rows
from pipeline.gates import read_verdict

BASELINE_POLICY = "ptq"


@dataclass
class Section:
    """One report section: a title, markdown paragraphs/tables, and optional image."""

    title: str
    body: list[str] = field(default_factory=list)
    image: Path | None = None


def _local(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], float]:
    """(model, format, dtype, policy) -> local p50 ms."""
    return {
        (r["model"], r["format"], r["dtype"], str(r["policy"])): r["p50_ms"]
        for r in rows
        if r.get("device") == "local" and r.get("p50_ms")
    }


@dataclass(frozen=True)
class _Inputs:
    """What every section reads: the run's rows, collected once."""

    res: RunResults
    arts: list[dict[str, Any]]
    benches: list[dict[str, Any]]
    quants: list[dict[str, Any]]
    local: dict[tuple[str, str, str, str], float]
    out: Path


def build_sections(res: RunResults, out_dir: Path) -> list[Section]:
    """Compute every section (and write its PNG into ``out_dir``), in report order."""
    benches = bench_rows(res)
    data = _Inputs(res, artifact_rows(res), benches, quant_rows(res), _local(benches), out_dir)
    sections = [sec for sec in (build(data) for build in _SECTIONS) if sec is not None]
    for sec in sections:
        if not sec.body or all(line.count("\n") == 1 and line.startswith("|") for line in sec.body):
            if sec.image is None:
                sec.body.append("_No measured results for this section in this run._")
    return sections


_LATENCY_COLUMNS = (
    Column("model", "model"), Column("format", "format"), Column("dtype", "dtype"),
    Column("policy", lambda r: str(r["policy"])), Column("device", "device"),
    Column("MACs (M)", lambda r: (r.get("macs") or 0) / 1e6, ".1f"),
    Column("p50 ms", lambda r: fmt(r.get("p50_ms")) + (" (emulated)" if r["emulated"] else "")),
    Column("p90 ms", "p90_ms"), Column("instr./inference", "instructions_per_inference", ".4g"),
    Column("stability", lambda r: r.get("stability") or ("unstable" if r.get("unstable") else "-")),
    Column("CV %", "cv_pct", ".1f"), Column("p99/p50", "p99_p50", ".2f"),
)


def _latency_section(d: _Inputs) -> Section:
    s = Section("1. Latency against MACs")
    s.image = plots.latency_vs_macs(d.benches, d.out / "latency_vs_macs.png")
    rows = sorted(d.benches, key=lambda r: (r["device"], r["model"], r["format"], r["dtype"]))
    s.body.append(tables.table(_LATENCY_COLUMNS, rows))
    return s


_FIDELITY_COLUMNS = (
    Column("model", "model"), Column("target", "target"), Column("policy", "policy"),
    Column("accuracy", "accuracy"), Column("float accuracy", "float_accuracy"),
    Column("top-1 agreement", "top1_agreement"), Column("logits SQNR dB", "sqnr_db"),
    Column("median / worst image dB", lambda q: f"{fmt(q['sqnr_db_median'])} / {fmt(q['sqnr_db_worst'])}"),
    Column("cosine", "cosine", ".4f"), Column("int8 p50 ms", "p50_ms"),
)


def _fidelity_section(d: _Inputs) -> Section:
    s = Section("2. Accuracy and agreement with float against latency, per quantisation policy")
    points = [q | {"p50_ms": d.local.get((q["model"], q["target"], "int8", q["policy"]))} for q in d.quants]
    s.image = plots.fidelity_vs_latency(points, d.out / "fidelity_vs_latency.png")
    if points:
        s.body.append("Each row is one int8 artifact: its figures were measured by running that artifact in its own "
                      "runtime on held-out images against the float model (the manifest's `fidelity`), beside that "
                      "same artifact's latency. Gate SQNR is measured on the quantised graph that was lowered.\n")
    s.body.append(tables.table(_FIDELITY_COLUMNS, sorted(points, key=lambda q: (q["model"], q["target"], q["policy"]))))
    return s


def _gate_section(d: _Inputs) -> Section:
    s = Section("3. Per-SE-block gate error: plain PTQ against the SE-aware policies")
    with_gates = [q for q in d.quants if not q["model"].endswith(NOSE_SUFFIX)]
    s.image = plots.gate_error(with_gates, BASELINE_POLICY, d.out / "gate_error.png")
    for q in with_gates:
        if q["gate_error"]:
            worst = min(q["gate_error"], key=lambda g: g.get("sqnr_db") if g.get("sqnr_db") is not None else 1e9)
            s.body.append(
                f"- {q['model']} ({q['target']}, {q['policy']}): {len(q['gate_error'])} SE blocks, "
                f"worst gate SQNR {fmt(worst.get('sqnr_db'))} dB at `{worst.get('block')}`"
            )
    return s


def _artifact_name(a: dict[str, Any]) -> str:
    # int8 artifacts of two policies share a file name (in different cells): say which.
    return Path(a["artifact"]).name + (f" ({a['policy']})" if a.get("dtype") == "int8" and a.get("policy") else "")


def _rewrites_cell(a: dict[str, Any]) -> str:
    if a.get("int8_rewrites"):
        return ", ".join(a["int8_rewrites"])
    return "none" if a.get("dtype") == "int8" else "-"


_ARTIFACT_COLUMNS = (
    Column("artifact", _artifact_name),
    Column("size (bytes)", lambda a: f"{a['size_bytes']:,}" if a.get("size_bytes") else "-"),
    Column("parity", lambda a: _parity_text(a)),
    Column("delegated share", "delegation_share", ".1%"),
    Column("partitions", lambda a: "-" if a.get("partitions") is None else str(a["partitions"])),
    Column("outside delegate", lambda a: a.get("outside_delegate", "-")),
    Column("float ops in int8", lambda a: "n/a (fp32)" if a.get("float_in_int8") is None else a["float_in_int8"]),
    Column("int8 rewrites", _rewrites_cell),
    Column("sha256", lambda a: f"`{(a.get('sha256') or '-')[:16]}`"),
)


def _artifacts_section(d: _Inputs) -> Section:
    s = Section("6. Every artifact")
    if d.arts:
        s.body.append(
            "Partitions: delegate partitions the runtime made (1 = the whole graph in XNNPACK). Outside delegate: "
            "operators left to the portable or reference kernels. Float ops in int8: operators computing in float "
            "between dequantize and quantize. Int8 rewrites: `quantize.int8_ops`, as recorded in the manifest.\n"
        )
    s.body.append(tables.table(_ARTIFACT_COLUMNS, sorted(d.arts, key=lambda a: Path(a["artifact"]).name)))
    return s


def _first_call(b: dict[str, Any]) -> str:
    """The first call's ms; for a compiled mode whose kernels came from the compile cell, its cold compile too."""
    if b.get("first_call_ms") is None:
        return "-"
    text = fmt(b["first_call_ms"], ".0f")
    if b.get("from_cache"):
        text += " (kernels cached" + (f"; cold compile {b['cold_first_call_ms'] / 1e3:.0f} s"
                                      if b.get("cold_first_call_ms") is not None else "") + ")"
    return text


_BASELINE_COLUMNS = (
    Column("model", "model"), Column("device", "device"), Column("mode", "mode"), Column("dtype", "dtype"),
    Column("batch", "batch"), Column("p50 ms", "p50_ms"), Column("first call ms", _first_call),
    Column("note", lambda b: b.get("skipped") or (b.get("gpu") or "")),
)


def _baselines_section(d: _Inputs) -> Section:
    s = Section("Desktop PyTorch baselines")
    s.body.append(tables.table(_BASELINE_COLUMNS, baseline_rows(d.res)))
    return s


def _parity_text(a: dict[str, Any]) -> str:
    p = a.get("parity") or {}
    bits = []
    for key in ("max_abs_err", "max_abs", "cosine", "sqnr_db", "top1_agreement"):
        if isinstance(p.get(key), (int, float)):
            bits.append(f"{key}={fmt(p[key], '.3g')}")
    status = {True: "pass", False: "FAIL", None: "-"}[p.get("passed")]
    return status + (" (" + ", ".join(bits[:3]) + ")" if bits else "")


def _se_cost_section(d: _Inputs) -> Section:
    res, arts, local, out = d.res, d.arts, d.local, d.out
    s = Section("4. What SE costs: each model against its no-SE twin")
    info = {r["model"]: r["accounting"] for r in res.stage("info")}
    pairs = []
    for name, acc in sorted(info.items()):
        twin = info.get(name + NOSE_SUFFIX)
        if twin is None:
            continue
        for form, dtype in sorted({(a["format"], a["dtype"]) for a in arts if a["model"] == name}):
            pol = "-" if dtype == "fp32" else BASELINE_POLICY
            size = {
                a["model"]: a.get("size_bytes")
                for a in arts
                if a["format"] == form and a["dtype"] == dtype and str(a["policy"]) == pol
            }
            se = {
                "params": acc["params"],
                "macs": acc["macs"],
                "size_bytes": size.get(name),
                "p50_ms": local.get((name, form, dtype, pol)),
            }
            nose = {
                "params": twin["params"],
                "macs": twin["macs"],
                "size_bytes": size.get(name + NOSE_SUFFIX),
                "p50_ms": local.get((name + NOSE_SUFFIX, form, dtype, pol)),
            }
            pairs.append({"label": f"{name}\n{form} {dtype}", "se": se, "nose": nose})

            def pct(key: str, se: dict[str, Any] = se, nose: dict[str, Any] = nose) -> str:
                return f"{100 * (se[key] / nose[key] - 1):+.1f}%" if se.get(key) and nose.get(key) else "n/a"

            s.body.append(
                f"- **{name}** ({form} {dtype}): SE adds {pct('macs')} MACs, {pct('params')} parameters, "
                f"{pct('size_bytes')} file size and {pct('p50_ms')} latency here."
            )
    s.image = plots.se_cost(pairs, out / "se_cost.png")
    s.body += _profile_lines(d.benches)
    return s


def _profile_lines(benches: list[dict[str, Any]]) -> list[str]:
    """'SE is X% of MACs and Y% of measured latency' for each bench row with a per-operator profile (none: no line)."""
    lines = []
    for r in sorted(benches, key=lambda r: (r["model"], r["format"], r["dtype"], r["device"])):
        prof = r.get("profile") or {}
        said = op_profile.sentence(prof) if prof.get("status") == "ok" else None
        if said:
            lines.append(f"- **{r['model']}** ({r['format']} {r['dtype']} on {r['device']}): {said}. Per-operator "
                         f"profile of {prof['runs']} runs; its operators sum to {prof['sum_to_end_to_end']:.2f} of "
                         "the end-to-end time.")
    return lines


def _scaling_section(d: _Inputs) -> Section:
    res, local, out = d.res, d.local, d.out
    s = Section("5. Compound scaling: phi against params, MACs and latency")
    pts = []
    for r in res.stage("info"):
        phi = r.get("phi")
        m = re.fullmatch(r"efficientnet_b0", r["model"])
        if phi is None and m is not None:
            phi = 0.0  # B0 is the phi = 0 point of the scaling rule
        if phi is None or r["model"].endswith(NOSE_SUFFIX):
            continue
        acc = r["accounting"]
        lat = {
            f"{fmt} {dt}": ms
            for (model, fmt, dt, pol), ms in local.items()
            if model == r["model"] and pol in ("-", BASELINE_POLICY)
        }
        pts.append(
            {
                "phi": phi,
                "params": acc["params"],
                "macs": acc["macs"],
                "resolution": acc["resolution"],
                "latency": lat,
                "model": r["model"],
            }
        )
    s.image = plots.compound_scaling(pts, out / "compound_scaling.png")
    s.body.append(tables.table(_SCALING_COLUMNS, sorted(pts, key=lambda p: p["phi"])))
    return s


_SCALING_COLUMNS = (
    Column("model", "model"), Column("phi", "phi"), Column("resolution", lambda p: str(p["resolution"])),
    Column("params", lambda p: f"{p['params']:,}"), Column("MACs (M)", lambda p: p["macs"] / 1e6, ".1f"),
    Column("latency p50 ms (local)",
           lambda p: ", ".join(f"{k}: {v:.3g}" for k, v in sorted(p["latency"].items())) or "-"),
)
_VIOLATION_COLUMNS = (
    Column("cell", lambda v: f"`{v['cell']}`"), Column("gate", "gate"),
    Column("measured", lambda v: "not measured" if v["measured"] is None else fmt(v["measured"], ".4g")),
    Column("limit", lambda v: fmt(v["limit"], ".4g")),
)


def _release_gates_section(d: _Inputs) -> Section | None:
    """The sweep's release gates (``[gates]``): met, or every violation; no section without gates."""
    verdict = read_verdict(d.res.run_dir)
    if verdict is None:
        return None
    s = Section("Release gates")
    violations = verdict["violations"]
    if not violations:
        s.body.append("**All gates met.** `edge-se run` exited 0 for them.")
    else:
        s.body.append(f"**{len(violations)} gate violation(s): `edge-se run` exited 1.** A cell that failed is "
                      "listed with gate `measured`: its figure was never measured, so it cannot pass.\n")
        s.body.append(tables.table(_VIOLATION_COLUMNS, violations))
    return s


#: The report's sections, in order (each a function of the collected rows; None: left out).
_SECTIONS = (_release_gates_section, _latency_section, _fidelity_section, _gate_section, _se_cost_section,
             _scaling_section, _artifacts_section, _baselines_section)


def _cells_line(res: RunResults) -> str:
    """``Cells: 50 done, 1 failed.``: how many cells of the run ended in each status."""
    statuses = Counter(e.get("status", "?") for e in res.index.get("cells", {}).values())
    line = "Cells: " + ", ".join(f"{n} {k}" for k, n in sorted(statuses.items())) + "."
    if res.index.get("timing") == "exclusive":
        ex = res.index.get("executor") or {}
        name = ex.get("name", "local") if isinstance(ex, dict) else str(ex)
        jobs = f", {ex['jobs']} jobs" if isinstance(ex, dict) and ex.get("jobs") else ""
        line += (f" Executor: {name}{jobs}. Timing cells (bench, baseline) on devices that time on this host ran "
                 "alone: no other cell ran while they timed.")
    return line


def render_markdown(res: RunResults, sections: list[Section]) -> str:
    """report.md: images referenced as files beside it."""
    idx = res.index
    lines = [
        "# edge-se report",
        "",
        f"Run `{res.run_dir}` from `{idx.get('config', '?')}`, started {idx.get('started', '?')}, "
        f"{idx.get('seconds', '?')} s of work.",
        "",
    ]
    lines.append(_cells_line(res))
    failed = [(cid, e.get("error")) for cid, e in idx.get("cells", {}).items() if e.get("status") == "failed"]
    for cid, err in failed:
        lines.append(f"- failed `{cid}`: {err}")
    for sec in sections:
        lines += ["", f"## {sec.title}", ""]
        if sec.image is not None:
            lines += [f"![{sec.title}]({sec.image.name})", ""]
        lines += sec.body
    return "\n".join(lines) + "\n"


@functools.cache
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table")


@functools.cache
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2")


def render_html(res: RunResults, sections: list[Section]) -> str:
    """report.html: one file, every image embedded as a data URI; markdown through markdown-it, page through Jinja2."""
    import markupsafe

    md = _markdown()
    rendered = [
        {
            "title": sec.title,
            "image": base64.b64encode(sec.image.read_bytes()).decode() if sec.image is not None else None,
            "body": markupsafe.Markup(md.render("\n\n".join(sec.body))),
        }
        for sec in sections
    ]
    return _template().render(run_dir=str(res.run_dir), seconds=res.index.get("seconds", "?"),
                              summary=markupsafe.Markup(md.render(_cells_line(res))), sections=rendered)


def write_report(run_dir: str | Path) -> dict[str, str]:
    """Write report.md, report.html and the PNGs into ``run_dir``; return their paths."""
    res = load_cells(run_dir)
    out = Path(run_dir)
    sections = build_sections(res, out)
    md = write_text(out / "report.md", render_markdown(res, sections))
    page = write_text(out / "report.html", render_html(res, sections))
    images = [str(s.image) for s in sections if s.image is not None]
    return {"markdown": str(md), "html": str(page), "images": ", ".join(images)}
