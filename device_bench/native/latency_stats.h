// Latency statistics of device_bench/stats.py for the native runner: the same definitions with the
// same floating-point operations in the same order, so both runners print the same doubles for the
// same samples. Sums are exactly rounded (fsum below is CPython's math.fsum), so no summation order
// can make them differ; build with -ffp-contract=off (native_build.CXXFLAGS) so no a + b * c is fused.
// tests/test_device_bench_stats.py compiles stats_check.cpp against this header and compares its
// output with stats.combine_repeats bit for bit. Standard library only (plus mini_json.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "mini_json.h"

namespace latency_stats {

// device_bench/stats.py: TRIM_PCT, STABLE_CV_MAX_PCT, STABLE_P99_P50_MAX (their comments say why).
constexpr size_t kTrimPct = 5;
constexpr double kStableCvMaxPct = 10.0;
constexpr double kStableP99P50Max = 2.0;

using It = std::vector<double>::const_iterator;

// The exactly rounded sum of finite values: Shewchuk's partials with CPython's final half-even
// correction (Modules/mathmodule.c, math_fsum), so the result is the double math.fsum returns.
inline double fsum(It first, It last) {
  std::vector<double> p;
  for (It it = first; it != last; ++it) {
    double x = *it;
    size_t i = 0;
    for (size_t j = 0; j < p.size(); ++j) {
      double y = p[j];
      if (std::fabs(x) < std::fabs(y)) std::swap(x, y);
      double hi = x + y;
      double yr = hi - x;
      double lo = y - yr;
      if (lo != 0.0) p[i++] = lo;
      x = hi;
    }
    p.resize(i);
    if (x != 0.0) p.push_back(x);
  }
  size_t n = p.size();
  double hi = 0.0, lo = 0.0;
  if (n > 0) {
    hi = p[--n];
    while (n > 0) {  // sum from the top, stop when the sum becomes inexact
      double x = hi, y = p[--n];
      hi = x + y;
      double yr = hi - x;
      lo = y - yr;
      if (lo != 0.0) break;
    }
    if (n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0))) {  // half-even across partials
      double y = lo * 2.0;
      double x = hi + y;
      double yr = x - hi;
      if (y == yr) hi = x;
    }
  }
  return hi;
}

// stats.percentile: linear interpolation between order statistics of sorted samples.
inline double percentile(const std::vector<double>& s, double q) {
  double pos = q / 100.0 * static_cast<double>(s.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos));
  size_t hi = std::min(lo + 1, s.size() - 1);
  return s[lo] + (s[hi] - s[lo]) * (pos - static_cast<double>(lo));
}

// A JSON number that reads back as the same double; non-finite (and "not known": NaN) -> null.
inline std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// stats.summarize; cv_pct and p99_p50 are NaN (printed null) where Python's are None.
struct Summary {
  double min = 0, p50 = 0, p90 = 0, p99 = 0, mean = 0, std = 0, trimmed_mean = 0, cv_pct = NAN, p99_p50 = NAN;
  size_t samples = 0;
};

inline Summary summarize(std::vector<double> s) {
  std::sort(s.begin(), s.end());
  const size_t n = s.size();
  Summary r;
  r.samples = n;
  r.min = s.front();
  r.p50 = percentile(s, 50);
  r.p90 = percentile(s, 90);
  r.p99 = percentile(s, 99);
  r.mean = fsum(s.begin(), s.end()) / static_cast<double>(n);
  std::vector<double> dev2(n);
  for (size_t i = 0; i < n; ++i) dev2[i] = (s[i] - r.mean) * (s[i] - r.mean);
  r.std = std::sqrt(fsum(dev2.begin(), dev2.end()) / static_cast<double>(n));
  const size_t k = n * kTrimPct / 100;  // floor(n * 5 / 100) from each end
  r.trimmed_mean = fsum(s.begin() + static_cast<std::ptrdiff_t>(k), s.end() - static_cast<std::ptrdiff_t>(k)) /
                   static_cast<double>(n - 2 * k);
  if (r.mean > 0) r.cv_pct = 100.0 * r.std / r.mean;
  if (r.p50 > 0) r.p99_p50 = r.p99 / r.p50;
  return r;
}

// The summary's JSON members (no braces): a repeat wraps them in {}, the pooled ones are top-level keys.
inline std::string members(const Summary& s, double seconds = -1) {
  std::string out = "\"min_ms\": " + num(s.min) + ", \"p50_ms\": " + num(s.p50) + ", \"p90_ms\": " + num(s.p90) +
                    ", \"p99_ms\": " + num(s.p99) + ", \"mean_ms\": " + num(s.mean) + ", \"std_ms\": " + num(s.std) +
                    ", \"trimmed_mean_ms\": " + num(s.trimmed_mean) + ", \"cv_pct\": " + num(s.cv_pct) +
                    ", \"p99_p50\": " + num(s.p99_p50) + ", \"samples\": " + std::to_string(s.samples);
  if (seconds >= 0) out += ", \"seconds\": " + num(seconds);
  return out;
}

// stats.spread: 100 * (max - min) / min of the repeat medians, in %.
inline double spread(const std::vector<double>& medians) {
  double lo = *std::min_element(medians.begin(), medians.end());
  double hi = *std::max_element(medians.begin(), medians.end());
  return lo > 0 ? 100.0 * (hi - lo) / lo : (hi > lo ? INFINITY : 0.0);
}

// printf's %.4g and %g are Python's format specs of the same name for finite values and inf.
inline std::string fmt(const char* spec, double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, spec, v);
  return buf;
}

// stats.verdict: "unstable" | "noisy" | "stable" and its reasons (same strings, same order).
inline std::string verdict(double spread_pct, double unstable_pct, double cv_pct, double p99_p50,
                           std::vector<std::string>* reasons) {
  const bool unstable = spread_pct > unstable_pct;
  if (unstable) reasons->push_back("repeat_spread_pct " + fmt("%.4g", spread_pct) + " > " + fmt("%g", unstable_pct));
  bool noisy = false;
  const struct { const char* name; double value, limit; } checks[] = {
      {"cv_pct", cv_pct, kStableCvMaxPct}, {"p99_p50", p99_p50, kStableP99P50Max}};
  for (const auto& c : checks) {
    if (std::isnan(c.value)) {
      reasons->push_back(std::string(c.name) + " not known");
    } else if (c.value > c.limit) {
      noisy = true;
      reasons->push_back(std::string(c.name) + " " + fmt("%.4g", c.value) + " > " + fmt("%g", c.limit));
    }
  }
  return unstable ? "unstable" : noisy ? "noisy" : "stable";
}

// stats.combine_repeats: the record's latency members (no braces): the pooled summary, "repeats"
// (each with its seconds), repeat_spread_pct, unstable, unstable_threshold_pct, stability, stability_reasons.
inline std::string combine_repeats(const std::vector<std::vector<double>>& repeats, const std::vector<double>& seconds,
                                   double unstable_pct) {
  std::vector<double> pooled, medians;
  std::string per = "[";
  for (size_t r = 0; r < repeats.size(); ++r) {
    Summary s = summarize(repeats[r]);
    per += std::string(r ? ", " : "") + "{" + members(s, r < seconds.size() ? seconds[r] : -1) + "}";
    medians.push_back(s.p50);
    pooled.insert(pooled.end(), repeats[r].begin(), repeats[r].end());
  }
  per += "]";
  Summary all = summarize(pooled);
  double sp = spread(medians);
  std::vector<std::string> reasons;
  std::string stability = verdict(sp, unstable_pct, all.cv_pct, all.p99_p50, &reasons);
  std::string why = "[";
  for (size_t i = 0; i < reasons.size(); ++i) why += (i ? ", " : "") + mini_json::quote(reasons[i]);
  why += "]";
  return members(all) + ", \"repeats\": " + per + ", \"repeat_spread_pct\": " + num(sp) +
         ", \"unstable\": " + (sp > unstable_pct ? "true" : "false") +
         ", \"unstable_threshold_pct\": " + num(unstable_pct) + ", \"stability\": " + mini_json::quote(stability) +
         ", \"stability_reasons\": " + why;
}

}  // namespace latency_stats
