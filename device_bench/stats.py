"""Latency statistics: percentiles, tail and spread figures, repeat spread and the stability verdict.

Runs on the device (imported by :mod:`device_bench.runner`): standard library and ``contract`` only, no numpy.
The native runner reimplements the same definitions in C++ (``native/latency_stats.h``) with the
same floating-point operations in the same order (sums are exactly rounded, as :func:`math.fsum`
is), so both print the same doubles for the same samples; ``tests/test_device_bench_stats.py``
compiles that header and compares.

Definitions (every figure in ms unless its name says ``_pct`` or is a ratio):
    * percentiles interpolate linearly between order statistics (numpy's default ``linear``);
    * ``mean_ms`` is ``fsum(samples) / n``; ``std_ms`` the population standard deviation (ddof 0),
      ``sqrt(fsum((x - mean) * (x - mean)) / n)``;
    * ``trimmed_mean_ms``: the mean of the sorted samples after dropping ``k = floor(n * 5 / 100)``
      from each end (:data:`TRIM_PCT`; for fewer than 20 samples ``k = 0``, the plain mean);
    * ``cv_pct = 100 * std_ms / mean_ms`` (coefficient of variation; ``None`` when the mean is 0);
    * ``p99_p50 = p99_ms / p50_ms`` (tail weight; ``None`` when the median is 0);
    * a repeat's figure is its median; ``repeat_spread_pct = 100 * (max - min) / min`` over the
      repeat medians; the result is ``unstable`` when ``repeat_spread_pct`` exceeds the stated
      threshold (``unstable_pct``);
    * ``stability`` (see :func:`verdict`): ``"unstable"`` when ``unstable``; else ``"noisy"`` when
      the pooled ``cv_pct`` exceeds :data:`STABLE_CV_MAX_PCT` or the pooled ``p99_p50`` exceeds
      :data:`STABLE_P99_P50_MAX` (the repeats agree, but the samples are widely spread or
      tail-heavy); else ``"stable"``. ``stability_reasons`` names each criterion that failed, with
      its figures, and each that could not be checked (a figure a tool did not give).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from contract.measure import DEFAULT

#: Repeats whose medians differ by more than this (percent of the fastest) mark a result unstable.
DEFAULT_UNSTABLE_PCT = DEFAULT.unstable_pct

#: Percent of the sorted samples dropped from *each* end for ``trimmed_mean_ms`` (floor of n * 5 / 100).
TRIM_PCT = 5

#: A pooled coefficient of variation above this (percent) makes a result ``noisy``. pyperf's
#: ``format_checks`` (pyperf/_cli.py) warns "the benchmark result may be unstable" at the same
#: 10% (its standard deviation is the sample one; ours is ddof 0, a hair smaller).
STABLE_CV_MAX_PCT = 10.0

#: A pooled p99 more than this many times the p50 makes a result ``noisy``: one inference in a
#: hundred takes over twice the typical time (preemption, frequency steps, page faults). Our own
#: limit, not a tool's; the CV alone misses a heavy tail that is rare enough.
STABLE_P99_P50_MAX = 2.0

Stability = Literal["stable", "noisy", "unstable"]


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


def _ratio(num: float | None, den: float | None, scale: float = 1.0) -> float | None:
    """``scale * num / den`` (in that order of operations), or None where either is unknown or ``den <= 0``."""
    if num is None or den is None or den <= 0:
        return None
    return scale * num / den


def summarize(samples_ms: Sequence[float]) -> dict[str, float | int | None]:
    """Summarise latency samples (ms).

    Returns:
        ``{min_ms, p50_ms, p90_ms, p99_ms, mean_ms, std_ms, trimmed_mean_ms, cv_pct, p99_p50, samples}``
        (definitions in the module docstring; ``cv_pct`` in percent, ``p99_p50`` a ratio).
    """
    if not samples_ms:
        raise ValueError("no latency samples to summarise")
    s = sorted(samples_ms)
    n = len(s)
    mean = math.fsum(s) / n
    var = math.fsum([(x - mean) * (x - mean) for x in s]) / n
    std = math.sqrt(var)
    k = n * TRIM_PCT // 100
    p50, p99 = percentile(s, 50), percentile(s, 99)
    return {
        "min_ms": s[0],
        "p50_ms": p50,
        "p90_ms": percentile(s, 90),
        "p99_ms": p99,
        "mean_ms": mean,
        "std_ms": std,
        "trimmed_mean_ms": math.fsum(s[k:n - k]) / (n - 2 * k),
        "cv_pct": _ratio(std, mean, 100.0),
        "p99_p50": _ratio(p99, p50),
        "samples": n,
    }


def spread(repeat_medians_ms: Sequence[float]) -> float:
    """Return ``100 * (max - min) / min`` of the per-repeat medians, in % (0 for a single repeat)."""
    if not repeat_medians_ms:
        raise ValueError("no repeats")
    lo, hi = min(repeat_medians_ms), max(repeat_medians_ms)
    if lo <= 0:
        return math.inf if hi > lo else 0.0
    return 100.0 * (hi - lo) / lo


def verdict(*, spread_pct: float, unstable_pct: float, cv_pct: float | None, p99_p50: float | None
            ) -> tuple[Stability, list[str]]:
    """The stability verdict and its reasons.

    Args:
        spread_pct: ``repeat_spread_pct`` (%).
        unstable_pct: its threshold (%): above it the result is ``"unstable"``.
        cv_pct: the pooled coefficient of variation (%), None where it is not known.
        p99_p50: the pooled p99 / p50, None where it is not known.

    Returns:
        ``"unstable"`` when ``spread_pct > unstable_pct``; else ``"noisy"`` when ``cv_pct >``
        :data:`STABLE_CV_MAX_PCT` or ``p99_p50 >`` :data:`STABLE_P99_P50_MAX`; else ``"stable"``
        (unknown figures are not held against it). The reasons, in that order: one short string
        per failed criterion with its figure and limit (``"cv_pct 14.2 > 10"``), and
        ``"<name> not known"`` per figure that could not be checked.
    """
    reasons: list[str] = []
    unstable = spread_pct > unstable_pct
    if unstable:
        reasons.append(f"repeat_spread_pct {spread_pct:.4g} > {unstable_pct:g}")
    noisy = False
    for name, value, limit in (("cv_pct", cv_pct, STABLE_CV_MAX_PCT), ("p99_p50", p99_p50, STABLE_P99_P50_MAX)):
        if value is None:
            reasons.append(f"{name} not known")
        elif value > limit:
            noisy = True
            reasons.append(f"{name} {value:.4g} > {limit:g}")
    return ("unstable" if unstable else "noisy" if noisy else "stable"), reasons


def _stability(pooled: dict[str, Any], sp: float, unstable_pct: float) -> dict[str, Any]:
    """The spread and stability keys of a result from its pooled summary and repeat spread (%)."""
    stability, reasons = verdict(spread_pct=sp, unstable_pct=unstable_pct, cv_pct=pooled["cv_pct"],
                                 p99_p50=pooled["p99_p50"])
    return {
        "repeat_spread_pct": sp,
        "unstable": stability == "unstable",
        "unstable_threshold_pct": unstable_pct,
        "stability": stability,
        "stability_reasons": reasons,
    }


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
        the flat latency keys of ``contract.bench`` (:func:`summarize`'s, pooled over all
        repeats), ``repeats`` (each repeat's summary, same keys plus ``seconds``),
        ``repeat_spread_pct``, ``unstable``, ``unstable_threshold_pct``, ``stability`` and
        ``stability_reasons`` (:func:`verdict` of the spread and the pooled figures).
    """
    if not repeats or any(len(r) == 0 for r in repeats):
        raise ValueError("every repeat needs at least one sample")
    per: list[dict[str, Any]] = [summarize(r) for r in repeats]
    if seconds is not None:
        for p, sec in zip(per, seconds, strict=True):
            p["seconds"] = sec
    pooled = summarize([x for r in repeats for x in r])
    sp = spread([float(p["p50_ms"]) for p in per])
    return {**pooled, "repeats": per, **_stability(pooled, sp, unstable_pct)}


def _derived(summary: dict[str, Any]) -> dict[str, Any]:
    """A copy of a tool's summary with ``cv_pct`` and ``p99_p50`` where its figures allow, ``trimmed_mean_ms`` None."""
    return {
        **summary,
        "trimmed_mean_ms": summary.get("trimmed_mean_ms"),
        "cv_pct": _ratio(summary.get("std_ms"), summary.get("mean_ms"), 100.0),
        "p99_p50": _ratio(summary.get("p99_ms"), summary.get("p50_ms")),
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
    ``percentiles_pooled: false``. ``trimmed_mean_ms`` needs the samples and is ``None``;
    ``cv_pct`` is the pooled ``100 * std / mean`` and ``p99_p50`` the ratio of the pooled
    (median) percentiles, ``None`` where their figures are; each repeat gets the same from its own
    figures. The verdict is :func:`verdict` of what is known.
    """
    if not summaries:
        raise ValueError("no repeats")
    n = sum(int(s["samples"]) for s in summaries)
    mean = math.fsum([s["mean_ms"] * s["samples"] for s in summaries]) / n
    std: float | None = None
    if all(s.get("std_ms") is not None for s in summaries):
        second = math.fsum([(s["std_ms"] ** 2 + s["mean_ms"] ** 2) * s["samples"] for s in summaries]) / n
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
    pooled = _derived(pooled)
    figure = [s["p50_ms"] if s.get("p50_ms") is not None else s["mean_ms"] for s in summaries]
    sp = spread(figure)
    return {
        **pooled,
        "repeats": [_derived(s) for s in summaries],
        **_stability(pooled, sp, unstable_pct),
        "percentiles_pooled": False,
    }


def paired_ratio(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's artifact against its ``paired`` twin (the runners' ``--paired-with``), repeat by repeat.

    Each repeat timed both artifacts back to back, so the ratio of their two repeat medians is
    one paired observation, free of the drift between repeats. Returns ``ratio`` (the median over
    repeats of p50 / paired p50), ``ratio_q1`` and ``ratio_q3`` (:func:`percentile` 25 and 75 of
    those ratios), ``ratios`` (each repeat's), ``repeats``, and the median of each artifact's
    repeat medians, ``p50_ms`` and ``paired_p50_ms`` (ms).

    Raises:
        ValueError: the record has no ``paired`` object, or its repeats do not pair up.
    """
    twin = record.get("paired")
    if not isinstance(twin, Mapping):
        raise ValueError("the record has no 'paired' object (time it with --paired-with)")
    mine = [float(r["p50_ms"]) for r in record.get("repeats") or []]
    theirs = [float(r["p50_ms"]) for r in twin.get("repeats") or []]
    if not mine or len(mine) != len(theirs):
        raise ValueError(f"paired record: {len(mine)} repeats against {len(theirs)}; they must pair up")
    ratios = [m / t for m, t in zip(mine, theirs, strict=True)]
    ordered = sorted(ratios)
    return {"ratio": percentile(ordered, 50.0), "ratio_q1": percentile(ordered, 25.0),
            "ratio_q3": percentile(ordered, 75.0), "ratios": ratios, "repeats": len(ratios),
            "p50_ms": percentile(sorted(mine), 50.0), "paired_p50_ms": percentile(sorted(theirs), 50.0)}
