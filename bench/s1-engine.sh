#!/usr/bin/env bash
# S1 through the engine: one shard (pinned to CPU 1) whose SYMBOLS books share one set of pools
# ([[shards]] orders, levels), driven flat out by `crossbook load` (pinned to CPU 0) with W1's mix
# spread over all the symbols, then over one of them. Two builds interleaved (A, B, B, A, ...),
# a fresh engine per run; compare adjacent pairs (this VM's speed modes change between rounds).
# Each load also prints the shard's busy share and its busy time per command (`crossbook stat`,
# over the load's middle): a load generator that cannot fill the shard (one symbol, here) shows
# a rate below the shard's, and the time per command is then the fairer comparison.
# Usage: bench/s1-engine.sh A_BINARY B_BINARY [ROUNDS] [SECONDS]
# Environment: SYMBOLS (10000), DURABILITY (none), ORDERS (the pools' orders and levels, 1048576),
# ZIPF (an exponent, e.g. 1.1: a third load per run, on a fresh engine, draws each order's symbol
# by Zipf's law; both binaries must know `load --zipf`).
set -u
a=$1; b=$2; rounds=${3:-3}; seconds=${4:-3}
symbols=${SYMBOLS:-10000}; durability=${DURABILITY:-none}; pool=${ORDERS:-1048576}; zipf=${ZIPF:-}
work=$(mktemp -d /tmp/crossbook-s1e.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 - "$work/s1.toml" "$symbols" "$durability" "$pool" "$work/data" <<'PY'
import sys
path, n, durability, pool, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
lines = ['[engine]', 'instance = "s1e-%d"' % n, 'data_dir = "%s"' % data, 'durability = "%s"' % durability,
         'max_symbols = %d' % (n + 16), '', '[[shards]]', 'core = 1', 'orders = %d' % pool, 'levels = %d' % pool, '']
for k in range(n):
    lines += ['[[symbols]]', 'name = "S%d-USD"' % k, 'shard = 0']
open(path, 'w').write('\n'.join(lines) + '\n')
PY
instance=s1e-$symbols
window=$(awk "BEGIN { w = $seconds - 1; print (w < 0.5 ? 0.5 : w) }")

start_engine() {
  rm -rf "$work/data"
  "$bin" run --config "$work/s1.toml" --no-plugins --clean-stale >"$work/engine.log" 2>&1 &
  engine=$!
  for _ in $(seq 1 300); do "$bin" stat --instance "$instance" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && break; sleep 0.05; done
}

# One load (its arguments added to the common ones): "RATE orders/s (busy P%, N ns a command)".
measure() {
  ( sleep 0.5; "$bin" stat --instance "$instance" --count 1 --interval "$window" --json >"$work/stat.json" 2>/dev/null ) &
  local stat=$!
  local rate
  rate=$(taskset -c 0 "$bin" load --instance "$instance" --rate 0 --duration "$seconds" --quiet "$@" | grep summary | sed 's/.*(\([0-9]*\)\/s).*/\1/')
  wait $stat
  echo "$rate orders/s ($(python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))["shards"][0]
print("busy %.0f%%, %.0f ns a command" % (s.get("busy_percent", -1), s.get("busy_ns_per_command", -1)))' "$work/stat.json" 2>/dev/null || echo "no stat"))"
}

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ); $symbols symbols, durability $durability, pools of $pool"
for round in $(seq 1 "$rounds"); do
  order="A B"; [ $((round % 2)) = 0 ] && order="B A"
  for side in $order; do
    bin=$([ "$side" = A ] && echo "$a" || echo "$b")
    start_engine
    many=$(measure --symbols "$symbols")
    one=$(measure --symbols 1)
    kill -INT $engine; wait $engine
    skewed=""
    if [ -n "$zipf" ]; then
      # On a fresh engine too: the other loads' resting orders stay in the books.
      start_engine
      skewed="; Zipf s = $zipf $(measure --symbols "$symbols" --zipf "$zipf")"
      kill -INT $engine; wait $engine
    fi
    echo "round $round $side: over $symbols symbols $many$skewed; one symbol $one"
  done
done
