#!/usr/bin/env bash
# S1 through the engine: one shard (pinned to CPU 1) whose SYMBOLS books share one set of pools
# ([[shards]] orders, levels), driven flat out by `crossbook load` (pinned to CPU 0) with W1's mix
# spread over all the symbols, then over one of them. Two builds interleaved (A, B, B, A, ...),
# a fresh engine per run; compare adjacent pairs (this VM's speed modes change between rounds).
# Usage: bench/s1-engine.sh A_BINARY B_BINARY [ROUNDS] [SECONDS]
# Environment: SYMBOLS (10000), DURABILITY (none), ORDERS (the pools' orders and levels, 1048576).
set -u
a=$1; b=$2; rounds=${3:-3}; seconds=${4:-3}
symbols=${SYMBOLS:-10000}; durability=${DURABILITY:-none}; pool=${ORDERS:-1048576}
work=$(mktemp -d /tmp/crossbook-s1e.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 - "$work/s1.toml" "$symbols" "$durability" "$pool" "$work/data" <<'EOF'
import sys
path, n, durability, pool, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
lines = ['[engine]', 'instance = "s1e-%d"' % n, 'data_dir = "%s"' % data, 'durability = "%s"' % durability,
         'max_symbols = %d' % (n + 16), '', '[[shards]]', 'core = 1', 'orders = %d' % pool, 'levels = %d' % pool, '']
for k in range(n):
    lines += ['[[symbols]]', 'name = "S%d-USD"' % k, 'shard = 0']
open(path, 'w').write('\n'.join(lines) + '\n')
EOF
instance=s1e-$symbols
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ); $symbols symbols, durability $durability, pools of $pool"
for round in $(seq 1 "$rounds"); do
  order="A B"; [ $((round % 2)) = 0 ] && order="B A"
  for side in $order; do
    bin=$([ "$side" = A ] && echo "$a" || echo "$b")
    rm -rf "$work/data"
    "$bin" run --config "$work/s1.toml" --no-plugins --clean-stale >"$work/engine.log" 2>&1 &
    engine=$!
    for _ in $(seq 1 300); do "$bin" stat --instance "$instance" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && break; sleep 0.05; done
    many=$(taskset -c 0 "$bin" load --instance "$instance" --symbols "$symbols" --rate 0 --duration "$seconds" --quiet | grep summary | sed 's/.*(\([0-9]*\)\/s).*/\1/')
    one=$(taskset -c 0 "$bin" load --instance "$instance" --symbols 1 --rate 0 --duration "$seconds" --quiet | grep summary | sed 's/.*(\([0-9]*\)\/s).*/\1/')
    kill -INT $engine; wait $engine
    echo "round $round $side: over $symbols symbols $many orders/s; one symbol $one orders/s"
  done
done
