#!/usr/bin/env bash
# `make bench-cli`: edge-se --help wall time, paired against `python -c 'import torch'` -> results/bench_cli.md
set -euo pipefail
PY=${PY:-.venv/bin/python}
EDGE_SE=${EDGE_SE:-.venv/bin/edge-se}
out=results/bench_cli.md
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
farm-bench -n 7 --vs "$PWD/$PY -c 'import torch'" -- "$PWD/$EDGE_SE" --help > "$raw"
a=$(awk '/^A wall s/{print $5}' "$raw")
mkdir -p results
tmp=$(mktemp results/.bench_cli.XXXXXX)
{
  echo "# edge-se --help wall time (target: under a second)"
  echo
  echo "Measured by \`make bench-cli\` (scripts/bench_cli.sh): farm-bench, 7 runs paired against"
  echo "\`python -c 'import torch'\` (what every parser paid before the lazy imports), $(date -u +%F)."
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); AVX flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^avx' | sort -u | tr '\n' ' ')"
  echo
  echo "| command | wall median (s) | min | max |"
  echo "|---|---|---|---|"
  awk '/^A wall s/{printf "| edge-se --help | %s | %s | %s |\n",$5,$4,$6} /^B wall s/{printf "| python -c \"import torch\" | %s | %s | %s |\n",$5,$4,$6}' "$raw"
  echo
  echo "Target < 1 s: $(awk -v a="$a" 'BEGIN{print (a < 1.0) ? "met" : "NOT met"}') (median $a s)."
  echo
  echo '```'
  cat "$raw"
  echo '```'
} > "$tmp"
mv "$tmp" "$out"
echo "bench-cli: $out (edge-se --help median $a s)"
