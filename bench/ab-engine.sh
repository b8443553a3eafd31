#!/usr/bin/env bash
# A/B of two engine builds end to end, interleaved (A, B, A, B ...): for each round and each
# binary, a fresh engine (durability none, embedded default, --no-plugins unless PLUGINS=1) and
# a load process pinned to CPU 0: flat out, then 1M orders/s. Prints one line per run; compare
# adjacent A/B pairs (the machine's speed mode changes between rounds, not within a pair).
# Usage: bench/ab-engine.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS]
set -u
a=$1; b=$2; rounds=${3:-5}; seconds=${4:-3}

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ)"
for round in $(seq 1 "$rounds"); do
  order="A B"; [ $((round % 2)) = 0 ] && order="B A"  # the order within a pair must not decide
  for side in $order; do
    bin=$([ "$side" = A ] && echo "$a" || echo "$b")
    instance=ab-$$-$side
    load=$bin  # the load process of the same build (the control file layout may differ)
    extra=""
    if "$bin" run --help 2>&1 | grep -q -- --no-plugins && [ "${PLUGINS:-0}" = 0 ]; then extra=--no-plugins; fi
    "$bin" run --instance "$instance" --clean-stale --durability none $extra 2>/dev/null &
    engine=$!
    for _ in $(seq 1 300); do "$load" stat --instance "$instance" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && break; sleep 0.05; done
    flat=$(taskset -c 0 "$load" load --instance "$instance" --rate 0 --duration "$seconds" --quiet | grep summary | sed 's/.*(\([0-9]*\)\/s).*/\1/')
    p99=$(taskset -c 0 "$load" load --instance "$instance" --rate 1000000 --duration "$seconds" --quiet | grep latency | sed 's/.*p99 \([0-9.]*\) µs.*/\1/')
    kill -INT $engine; wait $engine
    echo "round $round $side: flat out $flat orders/s, p99 at 1M/s $p99 us"
  done
done
