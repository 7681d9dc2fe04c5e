"""The peer benchmark's table: edge-se vs the best peer int8 artifact, per architecture, format and threads.

Pure functions over plain records (no I/O, no runtimes), so the comparison logic is tested
without building anything. Inputs:
    * artifacts: one dict per artifact, ``{key, arch, recipe, format, dtype, artifact, size_bytes,
      partitions, build_error}`` (``partitions``: a :mod:`benchmarks.peers.partitions` report);
    * timings: ``(key, threads)`` -> :func:`benchmarks.peers.timing.aggregate` output plus ``errors``;
    * paired: ``(pair key, threads)`` -> :func:`benchmarks.peers.timing.pooled_ratio` output plus
      ``errors``, for the pairs :func:`pairs` names (edge-se int8 against its fp32 and each peer's int8).

Where paired figures exist, the targets are judged on them (the ratio of two artifacts timed back
to back in one process, free of the drift between rounds); the round medians stay in the tables.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks.peers.manifests import ARCHS, RECIPES
from export.partitions import op_diff, ops_text

TARGET_RATIO = 1.00
"""Issue 6: edge-se int8 at most this multiple of the best peer int8 latency (same arch, format, run)."""

SINGLE_PARTITION_TARGETS = (("mobilenetv3_large_100", "tflite"),)
"""Issue 6: (arch, format) whose edge-se int8 artifact must be one delegate partition."""


def artifact_key(arch: str, recipe: str, fmt: str, dtype: str) -> str:
    """``arch/recipe/format/dtype``: the key of an artifact in artifacts and timings."""
    return f"{arch}/{recipe}/{fmt}/{dtype}"


def pair_key(first: str, second: str) -> str:
    """``first vs second`` (artifact keys): the key of a paired timing, whose ratio is first / second."""
    return f"{first} vs {second}"


def pairs(artifacts: Sequence[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """The paired timings a run makes: pair key -> (first, second) artifact keys.

    Per architecture and format: edge-se int8 against edge-se fp32, and against each peer's int8.
    Only artifacts that were built (no ``build_error``) are paired.
    """
    built = {a["key"] for a in artifacts if not a.get("build_error")}
    out = {}
    for arch in ARCHS:
        for fmt in ("pte", "tflite"):
            mine = artifact_key(arch, "edge-se", fmt, "int8")
            others = [artifact_key(arch, "edge-se", fmt, "fp32")]
            others += [artifact_key(arch, r, fmt, "int8") for r in peers_for(fmt)]
            for other in others:
                if mine in built and other in built:
                    out[pair_key(mine, other)] = (mine, other)
    return out


def peers_for(fmt: str) -> list[str]:
    """Peer recipes that produce ``fmt`` (edge-se excluded), in :data:`RECIPES` order."""
    return [r for r, fmts in RECIPES.items() if r != "edge-se" and fmt in fmts]


def _ms(timings: dict[tuple[str, int], dict[str, Any]], key: str, threads: int, field: str = "p50_ms") -> float | None:
    value = timings.get((key, threads), {}).get(field)
    return None if value is None else float(value)


def best_peer(peer_ms: dict[str, float | None]) -> tuple[str, float] | None:
    """The fastest peer with a measurement, ``(recipe, ms)``; ``None`` when none was measured."""
    measured = [(ms, r) for r, ms in peer_ms.items() if ms is not None]
    if not measured:
        return None
    ms, recipe = min(measured)
    return recipe, ms


def ratio(edge_ms: float | None, peer_ms: float | None) -> float | None:
    """``edge_ms / peer_ms``; ``None`` when either is missing (or the peer took no time)."""
    if edge_ms is None or peer_ms is None or peer_ms <= 0:
        return None
    return edge_ms / peer_ms


def _paired(paired: dict[tuple[str, int], dict[str, Any]] | None, first: str, second: str,
            threads: int) -> dict[str, float] | None:
    """``{ratio, ratio_q1, ratio_q3}`` of the paired timing ``first`` / ``second``; ``None`` when not measured."""
    got = (paired or {}).get((pair_key(first, second), threads)) or {}
    if got.get("ratio") is None:
        return None
    return {k: float(got[k]) for k in ("ratio", "ratio_q1", "ratio_q3")}


def compare(artifacts: Sequence[dict[str, Any]], timings: dict[tuple[str, int], dict[str, Any]],
            threads: Sequence[int],
            paired: dict[tuple[str, int], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One comparison record per architecture x format x thread count.

    Returns:
        Records with ``arch``, ``format``, ``threads``, ``recipes`` {recipe: {int8_ms, int8_p90_ms,
        fp32_ms, fp32_p90_ms, int8_faster_than_fp32, int8_speedup}} (edge-se first; edge-se's row
        also ``paired_speedup``, fp32 / int8 from the paired timing, with ``paired_speedup_q1`` and
        ``q3``; each peer's row ``paired_ratio``, edge-se int8 / that peer's int8, paired),
        ``best_peer_int8`` {recipe, ms} or ``None``, ``ratio`` (edge-se int8 / best peer int8,
        round medians), ``judged`` {recipe, ratio, paired}: the peer edge-se is closest to losing
        to, each peer's ratio paired where measured, else from round medians (a pair whose runner
        process failed), ``target_met``
        (``judged.ratio`` <= :data:`TARGET_RATIO`, or a :func:`tie` with every peer over it;
        ``None`` when not measurable), ``tie`` (met only as a tie), ``ties`` (the :func:`tie`
        records) and ``over_target_pct``. ``int8_faster_than_fp32`` is judged on ``paired_speedup`` where measured.
    """
    present = {(a["arch"], a["format"]) for a in artifacts}
    out = []
    for arch in ARCHS:
        for fmt in ("pte", "tflite"):
            if (arch, fmt) not in present:
                continue
            mine = artifact_key(arch, "edge-se", fmt, "int8")
            for t in threads:
                recipes: dict[str, dict[str, Any]] = {}
                for recipe in ["edge-se", *peers_for(fmt)]:
                    row: dict[str, Any] = {}
                    for dtype in ("int8", "fp32"):
                        key = artifact_key(arch, recipe, fmt, dtype)
                        row[f"{dtype}_ms"] = _ms(timings, key, t)
                        row[f"{dtype}_p90_ms"] = _ms(timings, key, t, "p90_ms")
                    r = ratio(row["fp32_ms"], row["int8_ms"])
                    row["int8_speedup"] = r
                    if recipe == "edge-se":
                        pr = _paired(paired, mine, artifact_key(arch, recipe, fmt, "fp32"), t)
                        row["paired_speedup"] = None if pr is None else 1.0 / pr["ratio"]
                        row["paired_speedup_q1"] = None if pr is None else 1.0 / pr["ratio_q3"]
                        row["paired_speedup_q3"] = None if pr is None else 1.0 / pr["ratio_q1"]
                        r = row["paired_speedup"] if pr is not None else r
                    else:
                        pr = _paired(paired, mine, artifact_key(arch, recipe, fmt, "int8"), t)
                        row["paired_ratio"] = None if pr is None else pr["ratio"]
                    row["int8_faster_than_fp32"] = None if r is None else r > 1.0
                    recipes[recipe] = row
                best = best_peer({r: v["int8_ms"] for r, v in recipes.items() if r != "edge-se"})
                rr = ratio(recipes["edge-se"]["int8_ms"], best[1] if best else None)
                by_peer = []
                for peer, v in recipes.items():
                    if peer == "edge-se":
                        continue
                    if v.get("paired_ratio") is not None:
                        by_peer.append({"recipe": peer, "ratio": v["paired_ratio"], "paired": True})
                    elif (x := ratio(recipes["edge-se"]["int8_ms"], v["int8_ms"])) is not None:
                        by_peer.append({"recipe": peer, "ratio": x, "paired": False})
                closest = max(by_peer, key=lambda p: p["ratio"]) if by_peer else None
                judged = None if closest is None else closest["ratio"]
                over = [p for p in by_peer if p["ratio"] > TARGET_RATIO]
                ties = [tie(artifacts, arch, fmt, p["recipe"]) for p in over]
                tied = bool(over) and all(x is not None for x in ties)
                out.append({
                    "arch": arch, "format": fmt, "threads": t, "recipes": recipes,
                    "best_peer_int8": None if best is None else {"recipe": best[0], "ms": best[1]},
                    "ratio": rr,
                    "judged": closest,
                    "target_ratio": TARGET_RATIO,
                    "target_met": None if judged is None else (judged <= TARGET_RATIO or tied),
                    "tie": tied,
                    "ties": [x for x in ties if x is not None],
                    "over_target_pct": None if judged is None else max(0.0, 100.0 * (judged / TARGET_RATIO - 1.0)),
                })
    return out


def tie(artifacts: Sequence[dict[str, Any]], arch: str, fmt: str, peer: str) -> dict[str, Any] | None:
    """Whether edge-se's int8 artifact ran no operator ``peer``'s did not (:mod:`benchmarks.peers.runtime_ops`).

    Pure. A tie: edge-se's runtime operator sequence (``runtime_ops``) is a subsequence of the
    peer's (:func:`device_bench.op_profile.extra_ops`), so the two ran the same kernels, in the same
    order, on the same architecture and resolution, and the peer perhaps more; a paired ratio over
    1.00 is then not work that edge-se does and the peer does not. Returns ``{recipe, ops,
    peer_ops, peer_extra}`` (``peer_extra``: operator -> count, what only the peer ran), or None
    when it is not a tie or either sequence was not profiled.
    """
    from device_bench.op_profile import extra_ops

    ops = {a["key"]: a.get("runtime_ops") for a in artifacts}
    ours, theirs = ops.get(artifact_key(arch, "edge-se", fmt, "int8")), ops.get(artifact_key(arch, peer, fmt, "int8"))
    if not ours or not theirs:
        return None
    extra = extra_ops(ours, theirs)
    if extra is None:
        return None
    return {"recipe": peer, "ops": len(ours), "peer_ops": len(theirs), "peer_extra": dict(Counter(extra))}


def tie_text(t: dict[str, Any]) -> str:
    """One line on a :func:`tie`: ``a tie: edge-se ran 189 runtime operators, a subsequence of X's 190 (...)``."""
    extra = f" ({t['recipe']} also ran: {ops_text(t['peer_extra'])})" if t["peer_extra"] else " (the same sequence)"
    return f"a tie: edge-se ran {t['ops']} runtime operators, a subsequence of {t['recipe']}'s {t['peer_ops']}{extra}"


def operator_profile(partitions: dict[str, Any] | None) -> str:
    """One line: partitions, ops outside the delegate, float ops in int8 (the "why" of a miss)."""
    if not partitions:
        return "no partition report"
    parts = [f"{partitions.get('partitions')} partition(s)"]
    outside = partitions.get("ops_outside_delegate") or {}
    if outside:
        parts.append("outside delegate: " + ops_text(outside))
    floats = partitions.get("float_ops_in_int8") or {}
    if floats:
        parts.append("float in int8: " + ops_text(floats))
    return "; ".join(parts)


def target_findings(comparisons: Sequence[dict[str, Any]], artifacts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every issue-6 target with ``met`` (``True``/``False``/``None`` = not measurable) and ``detail``.

    Targets: edge-se int8 <= best peer int8 (per arch, format, threads); edge-se int8 faster than
    its fp32 (per arch, format, threads); :data:`SINGLE_PARTITION_TARGETS` in one partition.
    """
    by_key = {a["key"]: a for a in artifacts}
    findings = []
    for c in comparisons:
        edge = c["recipes"]["edge-se"]
        key = artifact_key(c["arch"], "edge-se", c["format"], "int8")
        art = by_key.get(key, {})
        why = art.get("build_error") or operator_profile(art.get("partitions"))
        where = f"{c['arch']} .{c['format']} {c['threads']}T"
        judged = c.get("judged")
        if judged is None:
            detail = "not measured: " + (why if edge["int8_ms"] is None else "no peer int8 measured")
        else:
            peer = judged["recipe"]
            if judged["paired"]:
                figures = f"{judged['ratio']:.2f}x {peer}, paired" + (
                    f" (round medians: {c['ratio']:.2f}x best peer, {c['best_peer_int8']['recipe']})"
                    if c["ratio"] is not None else "")
            else:
                figures = f"{judged['ratio']:.2f}x {peer} (round medians; not paired)"
            if c.get("tie"):
                detail = f"{figures}: {c['over_target_pct']:.0f}% over, " + "; ".join(tie_text(t) for t in c["ties"])
            elif c["target_met"]:
                detail = figures
            else:
                peer_rep = by_key.get(artifact_key(c["arch"], peer, c["format"], "int8"), {}).get("partitions")
                versus = (f"; operators vs {peer}: {op_diff(art['partitions'], peer_rep)}"
                          if art.get("partitions") and peer_rep else "")
                detail = f"{figures}: {c['over_target_pct']:.0f}% over; {why}{versus}"
        findings.append({"target": f"int8 <= {TARGET_RATIO:.2f}x best peer", "where": where,
                         "met": c["target_met"], "tie": bool(c.get("tie")), "detail": detail})
        sp, ps = edge["int8_speedup"], edge.get("paired_speedup")
        rounds = (f"int8 {edge['int8_ms']:.2f} ms vs fp32 {edge['fp32_ms']:.2f} ms ({sp:.2f}x)"
                  if sp is not None else "")
        if ps is not None:
            text = (f"paired: fp32 / int8 {ps:.2f}x (quartiles {edge['paired_speedup_q1']:.2f}-"
                    f"{edge['paired_speedup_q3']:.2f}x)" + (f"; round medians: {rounds}" if rounds else ""))
        else:
            text = rounds or "not measured"
        speedup = ps if ps is not None else sp
        findings.append({
            "target": "int8 faster than fp32", "where": where,
            "met": edge["int8_faster_than_fp32"],
            "detail": text + ("" if speedup is None or speedup > 1.0
                              else f": int8 {100.0 * (1.0 / speedup - 1.0):.0f}% slower; {why}"),
        })
    for arch, fmt in SINGLE_PARTITION_TARGETS:
        art = by_key.get(artifact_key(arch, "edge-se", fmt, "int8"))
        rep = (art or {}).get("partitions")
        met = None if not rep else bool(rep.get("single_partition"))
        detail = ((art or {}).get("build_error") or "artifact missing") if not rep else operator_profile(rep)
        findings.append({"target": "int8 in one delegate partition", "where": f"{arch} .{fmt}",
                         "met": met, "detail": detail})
    return findings


def delegated_count(rep: dict[str, Any]) -> str:
    """Operators inside the delegate: XNNPACK nodes of a ``.pte``; original ops minus those outside for ``.tflite``."""
    if rep.get("kind") == "pte":
        return str(sum((rep.get("delegated_nodes") or {}).values()))
    if rep.get("kind") == "tflite":
        return f"{rep['ops_total'] - sum((rep.get('ops_outside_delegate') or {}).values())} of {rep['ops_total']}"
    return "—"


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _paired_text(row: dict[str, Any]) -> str:
    """``1.12x (1.08-1.15)``: a row's paired speed-up and its quartiles; ``—`` when not measured."""
    if row.get("paired_speedup") is None:
        return "—"
    return f"{row['paired_speedup']:.2f}x ({row['paired_speedup_q1']:.2f}-{row['paired_speedup_q3']:.2f})"


def _yes(value: bool | None) -> str:
    return "—" if value is None else ("yes" if value else "**no**")


def markdown(comparisons: Sequence[dict[str, Any]], artifacts: Sequence[dict[str, Any]],
             findings: Sequence[dict[str, Any]], *, header: Sequence[str] = ()) -> str:
    """The report: latency table, int8-vs-fp32 table, targets, partition report, failures."""
    from edge_se.tables import markdown_table

    latency = []
    for c in comparisons:
        e = c["recipes"]["edge-se"]
        peers = "; ".join(f"{r} {_f(v['int8_ms'])} ({_f(v['int8_p90_ms'])})"
                          for r, v in c["recipes"].items() if r != "edge-se")
        best = c["best_peer_int8"]
        met = "—" if c["target_met"] is None else (
            f"tie (+{c['over_target_pct']:.0f}%)" if c.get("tie") else
            "met" if c["target_met"] else f"**+{c['over_target_pct']:.0f}%**")
        paired = "; ".join(f"{r} {_f(v.get('paired_ratio'), '{:.2f}x')}"
                           for r, v in c["recipes"].items() if r != "edge-se")
        latency.append([c["arch"], c["format"], str(c["threads"]), f"{_f(e['int8_ms'])} ({_f(e['int8_p90_ms'])})",
                        peers, best["recipe"] + " " + _f(best["ms"]) if best else "—", _f(c["ratio"], "{:.2f}x"),
                        paired, met])
    speedups = [[c["arch"], c["format"], str(c["threads"]), r, _f(v["fp32_ms"]), _f(v["int8_ms"]),
                 _f(v["int8_speedup"], "{:.2f}x"), _paired_text(v), _yes(v["int8_faster_than_fp32"])]
                for c in comparisons for r, v in c["recipes"].items()]
    targets = [[f["target"], f["where"], "tie" if f.get("tie") else _yes(f["met"]), f["detail"]] for f in findings]
    parts = []
    for a in artifacts:
        rep = a.get("partitions") or {}
        floats = rep.get("float_ops_in_int8")
        if a.get("build_error"):
            parts.append([a["key"], "—", "—", "—", f"build failed: {a['build_error']}", "—"])
            continue
        parts.append([a["key"], _f(a["size_bytes"] / 1e6, "{:.1f}") if a.get("size_bytes") else "—",
                      str(rep.get("partitions", "—")), str(delegated_count(rep)),
                      ops_text(rep.get("ops_outside_delegate") or {}) or "none",
                      "n/a (fp32)" if floats is None else (ops_text(floats) or "none")])
    sections = [
        ("int8 latency, edge-se vs peers (ms: median of round medians; p90 in brackets; paired: edge-se int8 / "
         "peer int8 timed back to back in one process, median over repeats; the target is judged on it)",
         ["arch", "format", "threads", "edge-se int8", "peer int8", "best peer", "edge-se / best",
          "edge-se / peer, paired", "target <= 1.00"], latency),
        ("int8 vs fp32 (ms; speed-up = fp32 / int8; paired: timed back to back in one process, median and "
         "quartiles over repeats, judged where measured; 'no' = int8 is slower)",
         ["arch", "format", "threads", "recipe", "fp32", "int8", "speed-up", "paired speed-up", "int8 faster?"],
         speedups),
        ("Targets (issue 6)", ["target", "where", "met", "detail"], targets),
        ("Delegation and partitions (read from each artifact)",
         ["artifact", "size MB", "partitions", "ops in delegate", "ops outside delegate", "float ops in int8 graph"],
         parts),
    ]
    lines = [*header]
    for title, head, rows in sections:
        lines += ["", f"## {title}", "", markdown_table(head, rows)]
    return "\n".join(lines) + "\n"
