"""Latency statistics: definitions match numpy, stability verdicts, pooled summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from device_bench import stats

REL = 1e-12  # float64 round-off only


def test_summarize_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.lognormal(0, 0.3, size=101).tolist()
    s = stats.summarize(x)
    for key, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
        assert s[key] == pytest.approx(np.percentile(x, q), rel=REL)
    assert s["mean_ms"] == pytest.approx(np.mean(x), rel=REL)
    assert s["std_ms"] == pytest.approx(np.std(x), rel=REL)
    assert s["min_ms"] == min(x) and s["samples"] == 101


def test_spread_and_unstable_flag():
    steady = stats.combine_repeats([[1.0, 1.0, 1.1], [1.02, 1.0, 1.01]], unstable_pct=5.0)
    assert not steady["unstable"] and steady["repeat_spread_pct"] == pytest.approx(1.0, rel=1e-9)
    drifting = stats.combine_repeats([[1.0] * 5, [1.2] * 5], unstable_pct=5.0)
    assert drifting["unstable"] and drifting["repeat_spread_pct"] == pytest.approx(20.0)
    assert drifting["samples"] == 10 and drifting["unstable_threshold_pct"] == 5.0
    assert [r["samples"] for r in drifting["repeats"]] == [5, 5]
    assert drifting["repeats"][1]["p50_ms"] == pytest.approx(1.2)


def test_combine_summaries_pools_mean_and_std_exactly():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    pooled = stats.combine_summaries([stats.summarize(a), stats.summarize(b)])
    assert pooled["mean_ms"] == pytest.approx(np.mean(a + b), rel=REL)
    assert pooled["std_ms"] == pytest.approx(np.std(a + b), rel=1e-9)
    assert pooled["min_ms"] == 1.0 and pooled["samples"] == 5
    assert pooled["percentiles_pooled"] is False
    partial = stats.combine_summaries([{"min_ms": 1, "mean_ms": 2, "std_ms": 0, "samples": 3, "p50_ms": None}])
    assert partial["p50_ms"] is None and partial["mean_ms"] == 2


def test_bad_input_raises():
    with pytest.raises(ValueError):
        stats.summarize([])
    with pytest.raises(ValueError):
        stats.combine_repeats([[1.0], []])
    assert math.isinf(stats.spread([0.0, 1.0]))
