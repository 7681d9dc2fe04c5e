"""Choose edge-se's int8 float prefix for this CPU: predicted from profiles, then measured before it is adopted.

For each (architecture, format): ``edge-se bench --profile`` on edge-se's own all-int8 and fp32
artifacts, on this machine, at every thread count the run times (one artifact serves them all),
both profiles summed per execution unit (:func:`device_bench.op_profile.unit_times`); the prefixes
whose predicted latency relative to all-int8 is lowest on average over the thread counts
(:func:`device_bench.op_profile.prefix_gain`, :func:`~device_bench.op_profile.ranked_prefixes`:
none unless it saves at least ``min_gain``) are the candidates. Each candidate, best predicted
first, is built (``edge-se export --dtype int8 --float-prefix N``, into a folder of its own) and
timed paired against the all-int8 artifact at every thread count (:func:`benchmarks.peers.timing.time_paired`);
it replaces the all-int8 artifact only if it is faster at every thread count and by at least
:data:`MEASURED_MIN_GAIN` on average (:func:`verdict`). Predicted first, then measured, as
``edge-se scale`` chooses a variant: the profiles that predict are noisy on a shared machine
(their sums moved by a third between sessions), a paired timing of the two artifacts is not.

The choice is a property of the CPU: on one with VNNI the int8 kernels win everywhere and nothing
is rebuilt; on an AVX2-only one the early layers may stay fp32 (``quantize/float_prefix.py``).
The timing that follows measures the adopted artifact itself.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.peers import timing
from benchmarks.peers.manifests import EDGE_SE_EXPORT_FLAGS
from benchmarks.peers.proc import edge_se_cli, log, run_logged
from contract.files import write_text
from contract.formats import artifact_name
from device_bench.op_profile import PREFIX_MIN_GAIN, prefix_gain, ranked_prefixes, trace_of, unit_times
from edge_se.errors import EdgeSeError

PROFILE_MEASURE = ["--runs", "50", "--warmup", "10", "--repeats", "1", "--cooldown", "0", "--min-seconds", "1"]
"""``edge-se bench`` flags of a profiling run (``--threads`` is added per run)."""

MAX_CANDIDATES = 2
"""Prefixes built and timed at most per (architecture, format), best predicted first; the second is
tried only if the first lost."""

CANDIDATE_SPACING = 3
"""A further candidate differs from every earlier one by at least this many units: neighbouring
prefixes predict nearly the same, and the second try is meant to test another depth."""

ALWAYS_TRIED = (1,)
"""Prefixes built and timed after the predicted candidates whenever the profiles predict them faster
than all-int8 at all (no ``min_gain``, no spacing), within the MAC cap: the stem alone. The stem's
convolution reads the 3-channel image: a 27-long dot product per output, the shape int8 kernels
without VNNI handle worst, and in a sum over 18-30 units its predicted saving sits inside the
profiles' noise. Seen: on the AVX2-only EPYC, B0 ``.tflite`` with N=1 measured 0.959x / 0.967x of
all-int8 (1 / 2 threads, ``results/peers_earlier/41167a9_*``) while the next run built only its two
best predictions (N=5, N=9), which measured 0.989x-1.073x."""

MEASURED_MIN_GAIN = 0.01
"""A candidate is adopted only if its paired time relative to all-int8 is below 1 at every thread
count and at most ``1 - MEASURED_MIN_GAIN`` on average: a smaller gain is within a paired timing's
quartiles on this machine and not worth a different artifact."""

MAX_FLOAT_MAC_SHARE = 0.5
"""A float prefix keeps at most this share of the network's MACs (``edge_se.accounting``) fp32.
Beyond it the "int8" artifact is an fp32 network with an int8 tail, and "int8 faster than fp32"
says nothing about int8: on the AVX2-only EPYC the profiles predicted MobileNetV3-Large ``.pte``
fastest with 17 of its 18 compute units fp32 (all but its two classifier layers: 98.8% of its
MACs), and a paired timing confirmed it by 3% / 1% (``results/peers_earlier/41167a9_*``)."""

VERIFY_ROUNDS = 3
"""Paired runner processes per thread count that time a candidate against all-int8 (each
:data:`benchmarks.peers.timing.PAIRED_MEASURE`: 4 paired repeats)."""


def _compute_units(arch: str, resolution: int) -> list[str]:
    import torch

    from edge_se.registry import build_model
    from quantize.core import export_graph
    from quantize.float_prefix import compute_units

    model = build_model(arch).eval()
    return compute_units(export_graph(model, (torch.zeros(1, 3, resolution, resolution),)))


def mac_shares(rows: Sequence[tuple[str, int]], order: Sequence[str]) -> list[float]:
    """Share of the network's MACs in its first N units, for N = 0 .. len(order) - 1 (pure).

    Args:
        rows: ``(module path, MACs)`` of every layer (``edge_se.accounting`` rows: ``blocks.3.dw.conv``).
        order: the units in execution order (``stem``, ``blocks.0``, ...; the profile's, the
            rows of :func:`device_bench.op_profile.prefix_gain`); a layer belongs to the unit its
            path starts with. Layers of no unit (a global pool) count in the total only.
    """
    total = sum(m for _, m in rows)
    per = dict.fromkeys(order, 0)
    for name, m in rows:
        unit = next((u for u in order if name == u or name.startswith(u + ".")), None)
        if unit is not None:
            per[unit] += m
    out, acc = [], 0
    for unit in order:
        out.append(acc / total if total else 0.0)
        acc += per[unit]
    return out


def _mac_shares(arch: str, resolution: int, units: Sequence[str]) -> list[float]:
    from edge_se.accounting import count
    from edge_se.registry import get_spec

    return mac_shares([(r.name, r.macs) for r in count(get_spec(arch), resolution).rows], list(dict.fromkeys(units)))


def choose(out: Path, arch: str, fmt: str, units: list[str], *, threads: Sequence[int] = (1,),
           min_gain: float = PREFIX_MIN_GAIN, shares: Sequence[float] | None = None,
           max_share: float = MAX_FLOAT_MAC_SHARE) -> dict[str, Any]:
    """Profile edge-se's all-int8 and fp32 ``fmt`` artifacts of ``arch`` here; return the prediction.

    ``units``: the unit of every convolution and linear layer of ``arch`` (:func:`_compute_units`);
    ``threads``: the thread counts profiled (those the run times the artifact at); ``shares``: the
    MAC share of each prefix (:func:`mac_shares`): only prefixes within ``max_share`` are candidates.

    Returns:
        ``{"n": 0, "candidates", "int8_ms", "fp32_ms", "threads", "by_threads", "min_gain"}``:
        ``candidates`` (:func:`candidates`) are to be built and measured (:func:`settle` sets
        ``n``); operator sums in ms, the top-level figures the first thread count's,
        ``by_threads`` every count's. ``{"n": 0, "error": ...}`` where a step failed. With
        ``--reuse`` of a run whose artifact keeps a prefix, that run's record (``reused``).
    """
    edge = out / "edge_se"
    arts = [edge / artifact_name(arch, fmt, dtype) for dtype in ("int8", "fp32")]
    manifest = arts[0].with_name(arts[0].name + ".json")
    if not manifest.exists() or not arts[1].exists():
        return {"n": 0, "error": "edge-se's int8 or fp32 artifact was not built"}
    kept = (json.loads(manifest.read_text()).get("quantization") or {}).get("float_prefix")
    if kept:
        # --reuse of a run that already adopted a prefix: its all-int8 artifact is gone, so neither
        # the profiles nor the paired timing can be taken again; its record says what was measured.
        record = choice_path(out, arch, fmt)
        done = json.loads(record.read_text()) if record.exists() else {}
        if done.get("n") != int(kept["count"]):
            return {"n": 0, "error": f"the int8 artifact keeps {kept['count']} units fp32 (--reuse) and the record "
                                     f"of the run that adopted them ({record}) says {done.get('n')}"}
        return {**done, "reused": True}
    tables, by_threads = [], {}
    for t in threads:
        bench_out = out / "float_prefix" / f"{arch}_{fmt}_{t}t.jsonl"
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
    first = by_threads[str(threads[0])]
    return {"n": 0, **predict(tables, shares=shares, min_gain=min_gain, max_share=max_share),
            "int8_ms": first["int8_ms"], "fp32_ms": first["fp32_ms"], "threads": list(threads),
            "by_threads": by_threads}


def predict(tables: Sequence[Sequence[dict[str, Any]]], *, shares: Sequence[float] | None,
            min_gain: float = PREFIX_MIN_GAIN, max_share: float = MAX_FLOAT_MAC_SHARE) -> dict[str, Any]:
    """The candidates of one (architecture, format) from its :func:`~device_bench.op_profile.prefix_gain` tables (pure).

    Returns:
        ``candidates`` (:func:`candidates` of the prefixes within ``max_share`` of the MACs, each
        with its ``fp32_mac_share``, then those of :data:`ALWAYS_TRIED` predicted faster than
        all-int8 and not yet among them, marked ``always_tried``), ``min_gain``,
        ``max_fp32_mac_share``, and ``over_share`` (``n``, ``last_unit``, ``relative``,
        ``fp32_mac_share``) where the best predicted prefix is over the cap and so never built.
    """
    every = ranked_prefixes(*tables, min_gain=-math.inf)
    if shares is not None:
        every = [{**r, "fp32_mac_share": shares[r["n"]]} for r in every]
    ranked = [r for r in every if 1.0 - r["relative"] >= min_gain]
    within = [r for r in ranked if r.get("fp32_mac_share", 0.0) <= max_share]
    picked = candidates(within)
    for r in every:
        if (r["n"] in ALWAYS_TRIED and r["relative"] < 1.0 and r.get("fp32_mac_share", 0.0) <= max_share
                and all(c["n"] != r["n"] for c in picked)):
            picked.append({**_candidate(r), "always_tried": True})
    out: dict[str, Any] = {"candidates": picked, "min_gain": min_gain, "max_fp32_mac_share": max_share}
    if ranked and ranked[0].get("fp32_mac_share", 0.0) > max_share:
        out["over_share"] = {k: ranked[0][k] for k in ("n", "last_unit", "relative", "fp32_mac_share")}
    return out


def candidates(ranked: Sequence[dict[str, Any]], *, limit: int = MAX_CANDIDATES,
               spacing: int = CANDIDATE_SPACING) -> list[dict[str, Any]]:
    """The prefixes to build and time, best predicted first: at most ``limit``, ``spacing`` units apart.

    ``ranked``: :func:`device_bench.op_profile.ranked_prefixes`. Each candidate keeps ``n``,
    ``last_unit``, ``relative``, ``predicted_each_ms`` (ms per thread count) and, where given,
    ``fp32_mac_share``.
    """
    picked: list[dict[str, Any]] = []
    for row in ranked:
        if len(picked) == limit:
            break
        if all(abs(row["n"] - c["n"]) >= spacing for c in picked):
            picked.append(_candidate(row))
    return picked


def _candidate(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("n", "last_unit", "relative", "predicted_each_ms", "fp32_mac_share") if k in row}


def verdict(measured: dict[str, dict[str, Any]], *, min_gain: float = MEASURED_MIN_GAIN) -> tuple[bool, str]:
    """Whether a candidate measured faster than all-int8: ``(adopt, why)``.

    Args:
        measured: thread count -> :func:`benchmarks.peers.timing.pooled_ratio` of the candidate
            against all-int8 (``ratio``: candidate / all-int8 time; below 1 is faster), or a
            record with ``errors`` only where the pair never ran.
        min_gain: the least mean saving adopted (:data:`MEASURED_MIN_GAIN`).

    Adopted only if every thread count was measured, each ratio is below 1, and their mean is at
    most ``1 - min_gain``.
    """
    if not measured:
        return False, "not timed"
    missing = [t for t, m in measured.items() if "ratio" not in m]
    if missing:
        errs = [e for t in missing for e in measured[t].get("errors", [])][:1]
        return False, f"paired timing failed at {', '.join(missing)} thread(s): {errs[0] if errs else 'no result'}"
    ratios = {t: float(m["ratio"]) for t, m in measured.items()}
    said = ", ".join(f"{r:.3f}x ({t}T)" for t, r in ratios.items())
    slower = [t for t, r in ratios.items() if r >= 1.0]
    if slower:
        return False, f"measured {said} of all-int8: not faster at {', '.join(slower)} thread(s)"
    mean = statistics.fmean(ratios.values())
    if 1.0 - mean < min_gain:
        return False, f"measured {said} of all-int8: mean saving {100 * (1 - mean):.1f}% < {100 * min_gain:.0f}%"
    return True, f"measured {said} of all-int8"


def rebuild(out: Path, arch: str, fmt: str, n: int, *, weights: Path, seed: int, dest: Path) -> str | None:
    """``edge-se export`` the int8 ``fmt`` artifact with ``--float-prefix n`` into ``dest``; the error line, or None."""
    rc, _, last = run_logged([edge_se_cli(), "export", arch, "--format", fmt, "--dtype", "int8", *EDGE_SE_EXPORT_FLAGS,
                              "--out", str(dest), "--weights", str(weights), "--seed", str(seed),
                              "--float-prefix", str(n)], f"float prefix: build {arch} .{fmt} with N={n}")
    return None if rc == 0 else f"edge-se export --float-prefix {n} exit {rc}: {last}"


def choice_path(out: Path, arch: str, fmt: str) -> Path:
    """Where a run records what it chose for ``(arch, fmt)`` (read back by ``--reuse``)."""
    return out / "float_prefix" / f"{arch}_{fmt}.choice.json"


def _install(candidate: Path, target: Path) -> None:
    """Move a candidate artifact, its parity data and its manifest over the all-int8 ones (renamed; manifest last)."""
    for suffix in (".parity.npz", "", ".json"):
        os.replace(candidate.with_name(candidate.name + suffix), target.with_name(target.name + suffix))


Build = Callable[[int, Path], "str | None"]
Measure = Callable[[Path, Path], dict[str, dict[str, Any]]]


def settle(out: Path, arch: str, fmt: str, choice: dict[str, Any], *, build: Build, measure: Measure) -> dict[str, Any]:
    """Build and time ``choice``'s candidates in order; adopt the first that measures faster than all-int8.

    Args:
        out: the run's artifacts folder (``edge_se/`` holds the all-int8 artifact).
        arch: architecture name.
        fmt: ``pte`` or ``tflite``.
        choice: :func:`choose`'s prediction.
        build: ``(n, folder)`` -> builds the candidate into ``folder``; the error line, or None.
        measure: ``(candidate, all_int8)`` artifact paths -> thread count -> paired pooled ratio
            (:func:`verdict`'s input).

    Returns:
        ``choice`` with ``n`` and ``last_unit`` of the adopted prefix (0 and None: the all-int8
        artifact stays), ``predicted_ms`` per thread count under ``by_threads``, and ``tried``: per
        candidate its prediction, ``measured`` ratios, ``adopted`` and ``why``. A candidate that is
        not adopted is removed; the adopted one replaces the all-int8 artifact (:func:`_install`).
    """
    target = out / "edge_se" / artifact_name(arch, fmt, "int8")
    tried = []
    for cand in choice.get("candidates", []):
        folder = out / "float_prefix" / "candidates" / f"{arch}_{fmt}_n{cand['n']}"
        shutil.rmtree(folder, ignore_errors=True)
        err = build(cand["n"], folder)
        if err:
            tried.append({**cand, "adopted": False, "why": err})
            log(f"float prefix: {arch} .{fmt}: N={cand['n']} not built: {err}")
            continue
        measured = measure(folder / target.name, target)
        adopt, why = verdict(measured)
        tried.append({**cand, "measured": {t: {k: m[k] for k in ("ratio", "ratio_q1", "ratio_q3", "repeats")}
                                           for t, m in measured.items() if "ratio" in m},
                      "adopted": adopt, "why": why})
        log(f"float prefix: {arch} .{fmt}: N={cand['n']} (through {cand['last_unit']}, predicted "
            f"{cand['relative']:.3f}x of all-int8): {why}: {'adopted' if adopt else 'not adopted'}")
        if adopt:
            _install(folder / target.name, target)
        shutil.rmtree(folder, ignore_errors=True)
        if adopt:
            for t, ms in zip(choice["threads"], cand["predicted_each_ms"], strict=True):
                choice["by_threads"][str(t)]["predicted_ms"] = ms
            return {**choice, "n": cand["n"], "last_unit": cand["last_unit"], "relative": cand["relative"],
                    "predicted_ms": cand["predicted_each_ms"][0], "fp32_mac_share": cand.get("fp32_mac_share"),
                    "tried": tried}
    return {**choice, "n": 0, "last_unit": None, "tried": tried}


def apply(out: Path, archs: list[str], formats: list[str], *, seed: int, resolution: int,
          threads: Sequence[int] = (1,)) -> dict[str, Any]:
    """Predict, build, measure and adopt for every (arch, format); the run's meta keeps it under ``float_prefix``."""
    chosen: dict[str, Any] = {}
    for arch in archs:
        failed = "the network has no convolution or linear layer"
        try:
            units = _compute_units(arch, resolution)  # one graph export per architecture, for every format
        except EdgeSeError as exc:
            units, failed = [], f"profiles not usable: {exc}"
        weights = out / "weights" / f"{arch}_random_bn.pt"
        for fmt in formats:
            choice = (choose(out, arch, fmt, units, threads=threads, shares=_mac_shares(arch, resolution, units))
                      if units else {"n": 0, "error": failed})
            if "candidates" in choice and not choice.get("reused"):
                def build(n: int, dest: Path, a: str = arch, f: str = fmt, w: Path = weights) -> str | None:
                    return rebuild(out, a, f, n, weights=w, seed=seed, dest=dest)

                choice = settle(out, arch, fmt, choice, build=build,
                                measure=lambda cand, base: _measure(cand, base, threads))
                write_text(choice_path(out, arch, fmt), json.dumps(choice, indent=1) + "\n")
            log(f"float prefix: {arch} .{fmt}: {_said(choice)}")
            chosen[f"{arch}/{fmt}"] = choice
    return chosen


def _measure(candidate: Path, base: Path, threads: Sequence[int]) -> dict[str, dict[str, Any]]:
    """The candidate timed paired against all-int8 (:data:`VERIFY_ROUNDS` rounds) at every thread count."""
    pair = ((str(candidate), f"{candidate}.json"), (str(base), f"{base}.json"))
    got = timing.time_paired({"candidate": pair}, threads=threads, rounds=VERIFY_ROUNDS, log=log)
    return {str(t): got[("candidate", t)] for t in threads}


def _said(c: dict[str, Any]) -> str:
    """One line on a choice: the adopted prefix, or why none."""
    tried = c.get("tried")
    if c.get("n"):
        what = f"N={c['n']} (through {c['last_unit']}): predicted {_per_threads(c)}"
        if c.get("fp32_mac_share") is not None:
            what += f", {100 * c['fp32_mac_share']:.1f}% of MACs fp32"
        adopted = [t for t in tried or [] if t.get("adopted")]
        return what + (f"; {adopted[0]['why']}" if adopted else "")
    if c.get("error"):
        return str(c["error"])
    if tried:
        return f"all int8 ({_tried(tried)})"
    return f"all int8 (no prefix predicted to save {100 * c.get('min_gain', PREFIX_MIN_GAIN):.0f}%)"


def _tried(tried: Sequence[dict[str, Any]]) -> str:
    """``N=14 predicted 0.900x, measured ...: not faster at 2 thread(s); N=8 ...``: each candidate and why."""
    return "; ".join(f"N={t['n']}{' (always tried)' if t.get('always_tried') else ''} predicted "
                     f"{t['relative']:.3f}x, {t['why']}" for t in tried)


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
    measured_any = any("tried" in c for c in chosen.values())
    for key, c in chosen.items():
        counts.update(str(t) for t in c.get("threads", [1]))
        if c.get("n"):
            what = f"{key}: first {c['n']} units fp32 (through {c['last_unit']}; predicted {_per_threads(c)}"
            what += f"; fp32 {c['fp32_ms']:.2f} ms)" if "by_threads" not in c else ")"
            if c.get("fp32_mac_share") is not None:
                what += f", {100 * c['fp32_mac_share']:.1f}% of MACs fp32"
            adopted = [t for t in c.get("tried", []) if t.get("adopted")]
            if adopted:
                what += f", {adopted[0]['why']}"
            if not c.get("rebuilt", True):
                what += f", rebuild failed: {c.get('error')}"
        elif c.get("error"):
            what = f"{key}: not chosen ({c['error']})"
        elif c.get("tried"):
            what = f"{key}: all int8 ({_tried(c['tried'])})"
        else:
            what = f"{key}: all int8"
        if c.get("over_share"):
            o = c["over_share"]
            what += (f" [best predicted N={o['n']} (through {o['last_unit']}, {o['relative']:.3f}x) not built: "
                     f"{100 * o['fp32_mac_share']:.1f}% of MACs fp32, over the {100 * c['max_fp32_mac_share']:.0f}% "
                     "cap]")
        parts.append(what)
    at = " and ".join(sorted(counts, key=int)) or "1"
    caps = sorted({c["max_fp32_mac_share"] for c in chosen.values() if c.get("max_fp32_mac_share") is not None})
    cap = f" (a prefix keeps at most {', '.join(f'{100 * x:.0f}%' for x in caps)} of the MACs fp32)" if caps else ""
    how = (f"predicted from per-operator profiles at {at} thread(s) of edge-se's own all-int8 and fp32 artifacts "
           "(the lowest mean predicted latency relative to all-int8), then each candidate built and timed paired "
           f"against all-int8 at every thread count, adopted only if faster at each{cap}"
           if measured_any else
           f"chosen on this CPU from per-operator profiles at {at} thread(s) of edge-se's own all-int8 and fp32 "
           "artifacts, the lowest mean predicted latency relative to all-int8")
    return f"edge-se int8 float prefix, {how} (`benchmarks/peers/float_prefix.py`): {'; '.join(parts)}."
