#!/usr/bin/env bash
# Time from start to all clusters usable for a test bed of 2 clusters (the blog preset: 3 fake
# and 3 real nodes each), with cached binaries,
# over RUNS runs (default 3; BENCH_QUICK=1 runs once). Writes target/bench/testbed-startup.json.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/target/bench"
testbed="$root/target/debug/testbed"
mkdir -p "$out"
runs="${RUNS:-3}"
[[ "${BENCH_QUICK:-}" == 1 ]] && runs=1
export TESTBED_DIR="$root/target/testbed-bench"
trap '"$testbed" down >/dev/null 2>&1 || true' EXIT

times=()
for i in $(seq "$runs"); do
  "$testbed" down >/dev/null
  start=$(date +%s.%N)
  "$testbed" up --clusters 2 >/dev/null
  end=$(date +%s.%N)
  times+=("$(awk -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", e - s}')")
  echo "test bed up, run $i: ${times[-1]} s"
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
cat > "$out/testbed-startup.json" <<JSON
{"benchmark": "testbed", "baseline": "none (goal only)", "runs": [$(IFS=,; echo "${times[*]}")],
 "rows": [{"measure": "2 clusters up and Ready, 3 fake and 3 real nodes each, cached binaries (median of $runs)", "ours": $median,
           "baseline": null, "unit": "s", "ratio": null, "goal": "< 60 s"}]}
JSON
