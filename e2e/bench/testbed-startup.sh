#!/usr/bin/env bash
# Measures how long a test bed of 2 clusters takes from start to all clusters usable, with
# cached binaries, over RUNS runs (default 3; BENCH_QUICK=1 runs once). Writes
# target/bench/testbed-startup.json and a table in target/bench/summary.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/target/bench"
mkdir -p "$out"
runs="${RUNS:-3}"
[[ "${BENCH_QUICK:-}" == 1 ]] && runs=1
dir="$root/target/testbed-bench"
trap 'TESTBED_DIR="$dir" "$root/target/debug/testbed" down >/dev/null 2>&1 || true' EXIT

times=()
for i in $(seq "$runs"); do
  TESTBED_DIR="$dir" "$root/target/debug/testbed" down >/dev/null
  start=$(date +%s.%N)
  TESTBED_DIR="$dir" "$root/target/debug/testbed" up --clusters 2 >/dev/null
  end=$(date +%s.%N)
  times+=("$(awk -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", e - s}')")
  echo "run $i: ${times[-1]} s"
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
printf '{"measure":"testbed_up_2_clusters_seconds","runs":[%s],"median":%s,"goal":60,"commit":"%s","machine":"%s cores"}\n' \
  "$(IFS=,; echo "${times[*]}")" "$median" "$commit" "$(nproc)" > "$out/testbed-startup.json"
{
  echo "# Benchmarks ($commit, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "| measure | ours | baseline | ratio | goal |"
  echo "|---|---|---|---|---|"
  echo "| test bed up, 2 clusters, cached binaries (median of $runs) | ${median} s | - | - | < 60 s |"
} > "$out/summary.md"
cat "$out/summary.md"
