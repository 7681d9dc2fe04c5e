"""Latency statistics: percentiles, repeat spread and the stability verdict.

Runs on the device (imported by :mod:`device_bench.runner`): standard library and ``contract`` only, no numpy.
The native runner (``native/runner.cpp``) reimplements the same definitions in C++ (it has no
Python); the tests check both runners' output fields and checksums, not their statistics on
shared samples.

Definitions:
    * percentiles interpolate linearly between order statistics (numpy's default ``linear``);
    * ``std`` is the population standard deviation (ddof 0);
    * a repeat's figure is its median; ``spread_pct = 100 * (max - min) / min`` over the repeat
      medians; the result is ``unstable`` when ``spread_pct`` exceeds the stated threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from contract.measure import DEFAULT

#: Repeats whose medians differ by more than this (percent of the fastest) mark a result unstable.
DEFAULT_UNSTABLE_PCT = DEFAULT.unstable_pct


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) of already sorted samples, linear interpolation."""
    if not sorted_ms:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} outside 0..100")
    pos = q / 100.0 * (len(sorted_ms) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    frac = pos - lo
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * frac


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int]:
    """Summarise latency samples in ms as ``{min_ms, p50_ms, p90_ms, p99_ms, mean_ms, std_ms, samples}``."""
    if not samples_ms:
        raise ValueError("no latency samples to summarise")
    s = sorted(samples_ms)
    n = len(s)
    mean = math.fsum(s) / n
    var = math.fsum((x - mean) ** 2 for x in s) / n
    return {
        "min_ms": s[0],
        "p50_ms": percentile(s, 50),
        "p90_ms": percentile(s, 90),
        "p99_ms": percentile(s, 99),
        "mean_ms": mean,
        "std_ms": math.sqrt(var),
        "samples": n,
    }


def spread(repeat_medians_ms: Sequence[float]) -> float:
    """Return ``100 * (max - min) / min`` of the per-repeat medians (0 for a single repeat)."""
    if not repeat_medians_ms:
        raise ValueError("no repeats")
    lo, hi = min(repeat_medians_ms), max(repeat_medians_ms)
    if lo <= 0:
        return math.inf if hi > lo else 0.0
    return 100.0 * (hi - lo) / lo


def combine_repeats(
    repeats: Sequence[Sequence[float]],
    *,
    seconds: Sequence[float] | None = None,
    unstable_pct: float = DEFAULT_UNSTABLE_PCT,
) -> dict[str, Any]:
    """Combine per-repeat samples into the result's latency fields.

    Args:
        repeats: one list of latency samples (ms) per repeat.
        seconds: measured wall seconds per repeat (sum of the timed loop), if known.
        unstable_pct: threshold for ``unstable`` in percent of the fastest repeat median.

    Returns:
        the flat latency keys of ``contract.bench`` (``p50_ms`` ... ``samples``, pooled over all
        repeats), ``repeats`` (each repeat's summary, same keys plus ``seconds``),
        ``repeat_spread_pct``, ``unstable`` and ``unstable_threshold_pct``.
    """
    if not repeats or any(len(r) == 0 for r in repeats):
        raise ValueError("every repeat needs at least one sample")
    per = [summarize(r) for r in repeats]
    if seconds is not None:
        for p, sec in zip(per, seconds, strict=True):
            p["seconds"] = sec
    pooled = [x for r in repeats for x in r]
    sp = spread([float(p["p50_ms"]) for p in per])
    return {
        **summarize(pooled),
        "repeats": per,
        "repeat_spread_pct": sp,
        "unstable": bool(sp > unstable_pct),
        "unstable_threshold_pct": unstable_pct,
    }


def combine_summaries(
    summaries: Sequence[dict[str, Any]], *, unstable_pct: float = DEFAULT_UNSTABLE_PCT
) -> dict[str, Any]:
    """Combine repeats known only by their summaries (third-party tools that print no samples).

    ``summaries`` have :func:`summarize`'s keys (``mean_ms`` and ``samples`` at least). Pooled
    ``min`` is exact; pooled ``mean``/``std`` are exact from counts, means and stds (``None``
    where a tool printed no min or std);
    pooled percentiles cannot be recovered and are the median over repeats of each repeat's
    percentile (``None`` where a tool did not print it), which the result says in
    ``percentiles_pooled: false``.
    """
    if not summaries:
        raise ValueError("no repeats")
    n = sum(int(s["samples"]) for s in summaries)
    mean = math.fsum(s["mean_ms"] * s["samples"] for s in summaries) / n
    std: float | None = None
    if all(s.get("std_ms") is not None for s in summaries):
        second = math.fsum((s["std_ms"] ** 2 + s["mean_ms"] ** 2) * s["samples"] for s in summaries) / n
        std = math.sqrt(max(second - mean * mean, 0.0))
    mins = [s["min_ms"] for s in summaries if s.get("min_ms") is not None]
    pooled: dict[str, Any] = {
        "min_ms": min(mins) if len(mins) == len(summaries) else None,
        "mean_ms": mean,
        "std_ms": std,
        "samples": n,
    }
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        vals = sorted(s[key] for s in summaries if s.get(key) is not None)
        pooled[key] = percentile(vals, 50) if len(vals) == len(summaries) else None
    figure = [s["p50_ms"] if s.get("p50_ms") is not None else s["mean_ms"] for s in summaries]
    sp = spread(figure)
    return {
        **pooled,
        "repeats": list(summaries),
        "repeat_spread_pct": sp,
        "unstable": bool(sp > unstable_pct),
        "unstable_threshold_pct": unstable_pct,
        "percentiles_pooled": False,
    }
