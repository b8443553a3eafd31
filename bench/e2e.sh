#!/usr/bin/env bash
# End to end through the engine (no journal unless DURABILITY=sync|async), from a separate
# process: submit→ack latency at
# 100k and 1M orders/s and the highest rate the load process sustains, ROUNDS times each,
# interleaved. Engine on its embedded default (one shard pinned to the last CPU); the load
# process is pinned to CPU 0. Usage: bench/e2e.sh [ROUNDS] [SECONDS]
set -u
cd "$(dirname "$0")/.."
bin=.build/release/crossbook
rounds=${1:-3}
seconds=${2:-5}
instance=bench-e2e-$$
"$bin" run --instance "$instance" --clean-stale --durability "${DURABILITY:-none}" --data-dir "${DATA:-/tmp/crossbook-e2e-data}" 2>/dev/null &
engine=$!
trap 'kill -INT $engine 2>/dev/null; wait $engine' EXIT
for _ in $(seq 1 3000); do "$bin" stat --instance "$instance" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && break; sleep 0.1; done
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ)"
for round in $(seq 1 "$rounds"); do
  for rate in 100000 1000000 0; do
    label=$([ "$rate" = 0 ] && echo "flat out" || echo "$rate/s")
    out=$(taskset -c 0 "$bin" load --instance "$instance" --rate "$rate" --duration "$seconds" --quiet)
    echo "round $round, $label: $(echo "$out" | tr '\n' ' ' | sed 's/summary: //; s/submit→ack latency: /| /')"
  done
done
