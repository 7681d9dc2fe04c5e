// The native runner's statistics (latency_stats.h) on given samples, for checking them against
// device_bench/stats.py without ExecuTorch (device_bench/native_build.py: build_stats_check).
// stdin: UNSTABLE_PCT on the first line, then one repeat per line: SECONDS X1 X2 ... (ms).
// stdout: {the record's latency keys}, as the runner prints them. Errors: one line on stderr, status 2.
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "latency_stats.h"

int main() {
  std::string line;
  double unstable_pct = 0;
  if (!std::getline(std::cin, line) || !(std::istringstream(line) >> unstable_pct)) {
    std::fprintf(stderr, "stats_check: error: the first line must be UNSTABLE_PCT\n");
    return 2;
  }
  std::vector<std::vector<double>> repeats;
  std::vector<double> seconds;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    double sec = 0, x = 0;
    if (!(in >> sec)) continue;  // a blank line
    std::vector<double> samples;
    while (in >> x) samples.push_back(x);
    if (samples.empty()) {
      std::fprintf(stderr, "stats_check: error: repeat %zu has no samples\n", repeats.size());
      return 2;
    }
    seconds.push_back(sec);
    repeats.push_back(samples);
  }
  if (repeats.empty()) {
    std::fprintf(stderr, "stats_check: error: no repeats\n");
    return 2;
  }
  std::printf("{%s}\n", latency_stats::combine_repeats(repeats, seconds, unstable_pct).c_str());
  return 0;
}
