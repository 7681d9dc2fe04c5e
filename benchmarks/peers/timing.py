"""Alternating timing of many artifacts with the project's runner (``python -m device_bench.runner``).

Every artifact is timed once per round, in the same order each round (A B C A B C ...), at each
thread count, so slow drift of a shared machine (other jobs, thermal state) hits all artifacts
alike. Each timing is one runner process; its result is one JSON object on stdout. The figure
per artifact and thread count is the median over rounds of each round's median (and p90).
Every timing is measured by :data:`PEER_MEASURE` (a :class:`contract.measure.MeasureSpec`) and
read back through :func:`contract.bench.read_record`.

Ratios between two artifacts are also measured paired (:func:`time_paired`): one runner process
loads both and times them back to back, which goes first alternating, repeat by repeat
(``--paired-with``), so the drift between rounds that moves round medians apart cancels out of
each repeat's ratio (:func:`device_bench.stats.paired_ratio`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from contract.bench import read_record
from contract.errors import ContractError
from contract.measure import MeasureSpec

PEER_MEASURE = MeasureSpec(runs=20, warmup=5, min_seconds=1.0, repeats=1)
"""How every peer timing is measured: the method of the committed peer numbers (one repeat per
runner process; the rounds are the repeats). Threads are set per timing."""

PAIRED_MEASURE = PEER_MEASURE.replace(runs=10, min_seconds=0.5, repeats=4, cooldown_s=0.0)
"""How every paired timing is measured: 4 repeats per runner process (an even count, so each artifact
goes first in half of them), >= 0.5 s of each artifact per repeat."""

TIMEOUT_S = 300.0
"""Wall-clock limit of one runner process, seconds."""


def schedule(keys: Sequence[str], threads: Sequence[int], rounds: int) -> list[tuple[int, int, str]]:
    """The timing order: ``(round, threads, key)`` for every round, thread count and artifact.

    Within a round every thread count runs over all artifacts in the given order, so each
    artifact sees the same sequence of neighbours in every round.

    Raises:
        ValueError: no rounds, no thread counts or a thread count below 1.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not threads or min(threads) < 1:
        raise ValueError(f"threads must be a non-empty list of counts >= 1, got {list(threads)}")
    return [(r, t, k) for r in range(rounds) for t in threads for k in keys]


def parse_runner_output(stdout: str) -> dict[str, Any]:
    """The runner's result: the last line of stdout that is a measured bench record (``p50_ms``).

    Lines are read through :func:`contract.bench.read_record` (an ``edge-se/bench/1`` line is upgraded).

    Raises:
        ValueError: no such line (the first 200 characters of the output are quoted).
    """
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = read_record(json.loads(line), "runner output")
        except (json.JSONDecodeError, ContractError):
            continue
        if doc.get("p50_ms") is not None:
            return doc
    raise ValueError(f"runner printed no result object (a bench record with p50_ms): {stdout[:200]!r}")


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Combine one artifact's per-round runner results (at one thread count).

    Args:
        results: flat bench records, one per round (``p50_ms``, ``p90_ms``, ``min_ms``, ``samples``).

    Returns:
        ``p50_ms`` (median of round medians), ``p90_ms`` (median of round p90s), ``min_ms``
        (fastest inference seen), ``round_p50_ms`` (each round's median, in round order),
        ``spread_pct`` (100 * (max - min) / min of the round medians), ``rounds``, ``samples``.

    Raises:
        ValueError: no results.
    """
    if not results:
        raise ValueError("no runner results to aggregate")
    p50 = [float(r["p50_ms"]) for r in results]
    p90 = [float(r["p90_ms"]) for r in results]
    return {
        "p50_ms": statistics.median(p50),
        "p90_ms": statistics.median(p90),
        "min_ms": min(float(r["min_ms"]) for r in results),
        "round_p50_ms": p50,
        "spread_pct": 100.0 * (max(p50) - min(p50)) / min(p50) if min(p50) > 0 else float("inf"),
        "rounds": len(results),
        "samples": sum(int(r["samples"]) for r in results),
    }


def runner_command(python: str, artifact: str, manifest: str, threads: int,
                   spec: MeasureSpec = PEER_MEASURE) -> list[str]:
    """The argv of one runner process: ``spec`` at ``threads`` (every measurement flag, explicitly)."""
    return [python, "-m", "device_bench.runner", artifact, "--manifest", manifest,
            *spec.replace(threads=threads).to_argv()]


def pair_command(python: str, first: tuple[str, str], second: tuple[str, str], threads: int,
                 spec: MeasureSpec = PAIRED_MEASURE) -> list[str]:
    """The argv of one paired runner process: ``first`` timed against ``second`` (each ``(artifact, manifest)``)."""
    return [*runner_command(python, *first, threads, spec), "--paired-with", second[0], "--paired-manifest", second[1]]


def _run(cmd: list[str], timeout_s: float) -> dict[str, Any]:
    """Run one runner process; return its result, or ``{"error": ...}`` when it failed."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"runner timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or [""]
        return {"error": f"runner exit {proc.returncode}: {tail[0][:300]}"}
    try:
        return parse_runner_output(proc.stdout)
    except ValueError as exc:
        return {"error": str(exc)}


def time_once(python: str, artifact: str, manifest: str, threads: int, spec: MeasureSpec = PEER_MEASURE, *,
              timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Run the runner once; return its result, or ``{"error": ...}`` when it failed."""
    return _run(runner_command(python, artifact, manifest, threads, spec), timeout_s)


def pooled_ratio(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Combine one pair's paired runner results (one per round, at one thread count).

    Args:
        records: runner results with a ``paired`` object.

    Returns:
        ``ratio`` (first / second: the median of every repeat's ratio of medians, over all
        rounds), ``ratio_q1`` and ``ratio_q3`` (their 25th and 75th percentiles), ``round_ratio``
        (each round's median ratio), ``repeats`` (ratios pooled), ``rounds``, and the medians of
        each side's repeat medians, ``p50_ms`` and ``paired_p50_ms`` (ms).

    Raises:
        ValueError: no records, or a record whose repeats do not pair up.
    """
    if not records:
        raise ValueError("no paired runner results to pool")
    from device_bench.stats import paired_ratio, percentile

    per = [paired_ratio(r) for r in records]
    ratios = sorted(x for p in per for x in p["ratios"])
    return {"ratio": percentile(ratios, 50.0), "ratio_q1": percentile(ratios, 25.0),
            "ratio_q3": percentile(ratios, 75.0), "round_ratio": [p["ratio"] for p in per],
            "repeats": len(ratios), "rounds": len(per),
            "p50_ms": statistics.median(p["p50_ms"] for p in per),
            "paired_p50_ms": statistics.median(p["paired_p50_ms"] for p in per)}


def _alternate(keys: Sequence[str], threads: Sequence[int], rounds: int, run_one: Callable[[str, int], dict[str, Any]],
               combine: Callable[[list[dict[str, Any]]], dict[str, Any]], log: Callable[[str], None],
               done: Callable[[dict[str, Any]], str]) -> dict[tuple[str, int], dict[str, Any]]:
    """Run ``run_one(key, threads)`` over :func:`schedule`; combine each ``(key, threads)``'s results.

    Returns:
        ``(key, threads)`` -> ``combine`` of its results plus ``errors`` (a list; a key that never
        ran has only ``errors``).
    """
    per: dict[tuple[str, int], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, int], list[str]] = {}
    plan = schedule(list(keys), threads, rounds)
    for i, (r, t, key) in enumerate(plan):
        if len(errors.get((key, t), [])) >= 2 and not per.get((key, t)):
            continue  # failed twice and never ran: not worth more rounds
        res = run_one(key, t)
        if "error" in res:
            errors.setdefault((key, t), []).append(res["error"])
            log(f"[{i + 1}/{len(plan)}] round {r} threads {t} {key}: {res['error']}")
            continue
        per.setdefault((key, t), []).append(res)
        log(f"[{i + 1}/{len(plan)}] round {r} threads {t} {key}: {done(res)}")
    return {(key, t): {**(combine(per[(key, t)]) if per.get((key, t)) else {}), "errors": errors.get((key, t), [])}
            for key in keys for t in threads}


def time_alternating(
    artifacts: dict[str, tuple[str, str]],
    *,
    threads: Sequence[int],
    rounds: int,
    spec: MeasureSpec = PEER_MEASURE,
    timeout_s: float = TIMEOUT_S,
    python: str = sys.executable,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[tuple[str, int], dict[str, Any]]:
    """Time every artifact ``rounds`` times at each thread count, alternating; aggregate per pair.

    Args:
        artifacts: key -> (artifact path, manifest path), timed in this order each round.
        threads: thread counts.
        rounds: rounds (each artifact timed once per round and thread count).
        spec: how each timing is measured (its threads are replaced by each thread count).
        timeout_s: wall-clock limit of one runner process.
        python: the interpreter that runs ``device_bench.runner`` (the main venv's).
        log: progress sink (stderr).

    Returns:
        ``(key, threads)`` -> :func:`aggregate` of its rounds plus ``errors`` (a list; an artifact
        that never ran has only ``errors``).
    """
    return _alternate(list(artifacts), threads, rounds,
                      lambda key, t: time_once(python, *artifacts[key], t, spec, timeout_s=timeout_s),
                      aggregate, log, lambda res: f"p50 {res['p50_ms']:.2f} ms")


def time_paired(
    pairs: dict[str, tuple[tuple[str, str], tuple[str, str]]],
    *,
    threads: Sequence[int],
    rounds: int,
    spec: MeasureSpec = PAIRED_MEASURE,
    timeout_s: float = TIMEOUT_S,
    python: str = sys.executable,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[tuple[str, int], dict[str, Any]]:
    """Time every pair ``rounds`` times at each thread count, one paired runner process per timing.

    Args:
        pairs: key -> (first, second), each ``(artifact path, manifest path)``; the ratio is first / second.
        threads: thread counts.
        rounds: rounds (each pair timed once per round and thread count).
        spec: how each paired timing is measured (repeats: the paired observations per process).
        timeout_s: wall-clock limit of one runner process.
        python: the interpreter that runs ``device_bench.runner``.
        log: progress sink (stderr).

    Returns:
        ``(key, threads)`` -> :func:`pooled_ratio` of its rounds plus ``errors``.
    """
    from device_bench.stats import paired_ratio

    def once(key: str, t: int) -> dict[str, Any]:
        res = _run(pair_command(python, *pairs[key], t, spec), timeout_s)
        if "error" in res:
            return res
        try:
            paired_ratio(res)  # a paired object whose repeats pair up
        except (ValueError, KeyError, TypeError) as exc:
            return {"error": f"no paired timing in the runner's result: {exc}"}
        return res

    return _alternate(list(pairs), threads, rounds, once, pooled_ratio, log,
                      lambda res: f"ratio {paired_ratio(res)['ratio']:.3f}")
