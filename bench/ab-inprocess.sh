#!/usr/bin/env bash
# Interleaved A/B of the in-process engine benchmark (bench/Benchmarks/EngineBenchmarks: 1M W1
# orders client → shard → reports in one process, shard on core 1, client on core 0) between two
# checkouts, each with its bench package built (`cd X/bench && swift build -c release --product
# EngineBenchmarks`). Prints each run's p50 wall clock per order and mallocs, then the B/A
# ratios of throughput (A time / B time) as min/median/max.
# Usage: bench/ab-inprocess.sh A_CHECKOUT B_CHECKOUT [PAIRS]
set -u
a=$1; b=$2; pairs=${3:-4}
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ)"
run() {  # checkout -> "p50_ns mallocs"
  local out
  out=$(cd "$1/bench" && swift package --allow-writing-to-package-directory benchmark --target EngineBenchmarks --no-progress 2>&1)
  local ns mallocs
  ns=$(echo "$out" | grep 'Time (wall clock)' | awk -F'│' '{gsub(/ /,"",$4); print $4}')
  mallocs=$(echo "$out" | grep 'Malloc (total)' | awk -F'│' '{gsub(/ /,"",$8); print $8}')
  echo "$ns $mallocs"
}
ta=(); tb=()
runA() { read -r t m < <(run "$a"); ta+=("$t"); echo "pair $i A: p50 $t ns/order, mallocs (max) $m"; }
runB() { read -r t m < <(run "$b"); tb+=("$t"); echo "pair $i B: p50 $t ns/order, mallocs (max) $m"; }
for i in $(seq 1 "$pairs"); do  # odd pairs A first, even pairs B first
  if [ $((i % 2)) = 1 ]; then runA; runB; else runB; runA; fi
done
for i in $(seq 0 $((pairs - 1))); do awk "BEGIN {printf \"%.3f\n\", ${ta[$i]} / ${tb[$i]}}"; done | sort -n |
  awk '{v[NR]=$1} END {printf "in-process throughput B/A: min %s / median %s / max %s\n", v[1], v[int((NR+1)/2)], v[NR]}'
