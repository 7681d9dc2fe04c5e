"""Latency statistics: definitions match numpy, stability verdicts, pooled summaries."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from device_bench import native_build, stats

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


# --- stability figures: trimmed mean, CV, p99/p50, the verdict ---------------------------------------------------


def test_trimmed_mean_drops_five_percent_from_each_end():
    # 20 samples: k = floor(20 * 5 / 100) = 1 from each end, so the 0.5 and the 10.0 go.
    s = stats.summarize([1.0] * 18 + [0.5, 10.0])
    assert s["trimmed_mean_ms"] == 1.0 and s["mean_ms"] == pytest.approx(28.5 / 20, rel=REL)
    # 19 samples: k = 0, the plain mean (the same double).
    s = stats.summarize([1.0] * 17 + [0.5, 10.0])
    assert s["trimmed_mean_ms"] == s["mean_ms"]
    # 40 samples: k = 2 from each end.
    x = list(range(1, 41))
    assert stats.summarize([float(v) for v in x])["trimmed_mean_ms"] == pytest.approx(np.mean(x[2:38]), rel=REL)
    # Against scipy's definition where it agrees (it cuts int(proportion * n), the same floor).
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n in (7, 20, 59, 101, 1000):
        y = rng.lognormal(0, 0.4, size=n).tolist()
        assert stats.summarize(y)["trimmed_mean_ms"] == pytest.approx(scipy_stats.trim_mean(y, 0.05), rel=REL)


def test_cv_and_p99_p50_on_hand_made_samples():
    s = stats.summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])  # mean 5, population std 2
    assert s["mean_ms"] == 5.0 and s["std_ms"] == 2.0 and s["cv_pct"] == 40.0
    assert s["p50_ms"] == 4.5 and s["p99_ms"] == pytest.approx(7.0 + 2.0 * 0.93, rel=REL)  # pos 6.93
    assert s["p99_p50"] == pytest.approx(8.86 / 4.5, rel=REL)
    flat = stats.summarize([3.0] * 5)
    assert flat["cv_pct"] == 0.0 and flat["p99_p50"] == 1.0 and flat["trimmed_mean_ms"] == 3.0
    zero = stats.summarize([0.0, 0.0])
    assert zero["cv_pct"] is None and zero["p99_p50"] is None, "no ratio of a zero mean or median"


def test_verdict_stable():
    r = stats.combine_repeats([[1.0, 1.01, 0.99] * 10, [1.0, 1.01, 0.99] * 10], unstable_pct=5.0)
    assert r["stability"] == "stable" and r["stability_reasons"] == [] and not r["unstable"]
    assert all({"trimmed_mean_ms", "cv_pct", "p99_p50"} <= set(p) for p in r["repeats"])


def test_verdict_unstable_matches_the_unstable_flag():
    r = stats.combine_repeats([[1.0] * 5, [1.2] * 5], unstable_pct=5.0)
    assert r["unstable"] and r["stability"] == "unstable"
    assert r["cv_pct"] == pytest.approx(100 * 0.1 / 1.1, rel=1e-9) and r["p99_p50"] == pytest.approx(1.2 / 1.1)
    assert r["stability_reasons"] == ["repeat_spread_pct 20 > 5"]  # the CV (9.1%) and the tail (1.09) pass
    # Unstable and noisy at once: every failed criterion is named, the verdict is unstable.
    both = stats.combine_repeats([[1.0, 2.0] * 5, [2.0, 4.0] * 5], unstable_pct=5.0)
    assert both["stability"] == "unstable" and [x.split()[0] for x in both["stability_reasons"]] == [
        "repeat_spread_pct", "cv_pct"]


def test_verdict_noisy_from_the_cv():
    # The repeats agree (same median), but the samples spread widely: mean 1.5, std 0.5.
    r = stats.combine_repeats([[1.0, 2.0] * 5, [2.0, 1.0] * 5], unstable_pct=5.0)
    assert not r["unstable"] and r["repeat_spread_pct"] == 0.0
    assert r["cv_pct"] == pytest.approx(100 / 3, rel=REL) and r["p99_p50"] == pytest.approx(2.0 / 1.5, rel=REL)
    assert r["stability"] == "noisy" and r["stability_reasons"] == ["cv_pct 33.33 > 10"]


def test_verdict_noisy_from_the_tail():
    # 1.01% of the inferences take just over twice the median: p99 / p50 = 2.001 while the CV
    # stays under 10% (about 9.9%), so only the tail criterion fails.
    rep = [1.0] * 9899 + [2.001] * 101
    r = stats.combine_repeats([rep, rep[::-1]], unstable_pct=5.0)
    assert r["cv_pct"] == pytest.approx(100 * np.std(rep) / np.mean(rep), rel=1e-9) and r["cv_pct"] < 10
    assert r["p99_p50"] == pytest.approx(2.001, rel=REL)
    assert r["stability"] == "noisy" and r["stability_reasons"] == ["p99_p50 2.001 > 2"]


def test_verdict_limits_are_inclusive_and_named():
    limits = {"spread_pct": 5.0, "unstable_pct": 5.0, "cv_pct": stats.STABLE_CV_MAX_PCT,
              "p99_p50": stats.STABLE_P99_P50_MAX}
    assert stats.verdict(**limits) == ("stable", [])
    assert stats.verdict(**{**limits, "cv_pct": 10.5}) == ("noisy", ["cv_pct 10.5 > 10"])
    assert stats.verdict(**{**limits, "p99_p50": 2.5}) == ("noisy", ["p99_p50 2.5 > 2"])
    assert stats.verdict(**{**limits, "spread_pct": math.inf}) == ("unstable", ["repeat_spread_pct inf > 5"])
    assert stats.verdict(**{**limits, "cv_pct": None, "p99_p50": None}) == (
        "stable", ["cv_pct not known", "p99_p50 not known"])
    assert (stats.STABLE_CV_MAX_PCT, stats.STABLE_P99_P50_MAX, stats.TRIM_PCT) == (10.0, 2.0, 5)
    # The native runner's copies of the limits (latency_stats.h) are the same numbers.
    header = (Path(native_build.NATIVE_DIR) / "latency_stats.h").read_text()
    found = dict(re.findall(r"constexpr \w+ (k\w+) = ([0-9.]+);", header))
    assert found == {"kTrimPct": str(stats.TRIM_PCT), "kStableCvMaxPct": repr(stats.STABLE_CV_MAX_PCT),
                     "kStableP99P50Max": repr(stats.STABLE_P99_P50_MAX)}


def test_combine_summaries_gives_null_where_a_tool_gives_too_little():
    # executor_runner: a mean per repeat, no std, no percentiles.
    bare = [{"min_ms": None, "mean_ms": m, "std_ms": None, "samples": 20, "p50_ms": None, "p90_ms": None,
             "p99_ms": None} for m in (2.0, 2.02)]
    r = stats.combine_summaries(bare, unstable_pct=5.0)
    assert (r["trimmed_mean_ms"], r["cv_pct"], r["p99_p50"]) == (None, None, None)
    assert r["stability"] == "stable" and r["stability_reasons"] == ["cv_pct not known", "p99_p50 not known"]
    assert all(p["cv_pct"] is None and p["trimmed_mean_ms"] is None for p in r["repeats"])
    assert "cv_pct" not in bare[0], "the input is not modified"
    # benchmark_model: mean, std, min and median per repeat.
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    told = [{k: v for k, v in stats.summarize(x).items() if k in ("min_ms", "mean_ms", "std_ms", "samples", "p50_ms")}
            | {"p90_ms": None, "p99_ms": None} for x in (a, b)]
    r = stats.combine_summaries(told, unstable_pct=5.0)
    assert r["trimmed_mean_ms"] is None and r["p99_p50"] is None
    assert r["cv_pct"] == pytest.approx(100 * np.std(a + b) / np.mean(a + b), rel=1e-9)
    assert r["repeats"][0]["cv_pct"] == pytest.approx(100 * np.std(a) / np.mean(a), rel=REL)
    assert r["unstable"] and r["stability"] == "unstable"  # medians 2 and 3: 50% apart
    assert r["stability_reasons"][0] == "repeat_spread_pct 50 > 5" and "p99_p50 not known" in r["stability_reasons"]


# --- the native runner's statistics (native/latency_stats.h) against these, on the same samples ------------------


def _native_stats(binary, repeats, seconds, unstable_pct):
    lines = [repr(float(unstable_pct))] + [" ".join(map(repr, [float(s), *map(float, r)]))
                                          for s, r in zip(seconds, repeats, strict=True)]
    proc = subprocess.run([str(binary)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_native_statistics_equal_python_bit_for_bit(tmp_path):
    """Same definitions, same floating-point operations: the same doubles, not just close ones."""
    if shutil.which(native_build.COMPILERS["host"]) is None:
        pytest.skip(f"{native_build.COMPILERS['host']} not installed")
    binary = native_build.build_stats_check(tmp_path / "stats_check")
    rng = np.random.default_rng(11)
    cases = [
        ([[1.0, 1.01, 0.99] * 10] * 2, 5.0),  # stable
        ([[1.0] * 5, [1.2] * 5], 5.0),  # unstable
        ([[1.0, 2.0] * 5, [2.0, 1.0] * 5], 5.0),  # noisy: the CV
        ([[1.0] * 9899 + [2.001] * 101] * 2, 5.0),  # noisy: the tail
        ([[0.0, 0.0]], 5.0),  # cv_pct and p99_p50 not known (null)
        ([[0.1 * (i + 1)] for i in range(3)], 12.5),  # one sample per repeat
    ]
    for n in (1, 7, 19, 20, 21, 101, 1000):
        cases.append(([rng.lognormal(-1.0, 0.5, size=n).tolist() for _ in range(3)], 5.0))
    cases.append(([(rng.pareto(3.0, size=500) + 1.0).tolist(), rng.normal(5.0, 1.0, size=333).clip(0.01).tolist()],
                  2.0))
    for repeats, unstable_pct in cases:
        seconds = [math.fsum(r) / 1e3 for r in repeats]
        native = _native_stats(binary, repeats, seconds, unstable_pct)
        python = json.loads(json.dumps(stats.combine_repeats(repeats, seconds=seconds, unstable_pct=unstable_pct)))
        assert native == python, {k: (native.get(k), python.get(k)) for k in python if native.get(k) != python.get(k)}
