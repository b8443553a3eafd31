#!/usr/bin/env bash
# S2 (multi-shard scaling): one engine with N shards, each pinned to a core of its own and
# owning one symbol; N `crossbook load` processes, each pinned to a core of its own, each
# driving one symbol (--first-symbol i) flat out with the W1 mix for SECONDS. Prints, per N,
# the summed orders/s and each load's ack latency, so the per-shard rate at N can be compared
# with N = 1 (linear scaling: the sum grows N-fold).
# Usage: bench/scale.sh [SECONDS] [ROUNDS]; env: SHARDS (list, default "1 2 4"),
# SHARD_CORES / LOAD_CORES (lists, default: the upper and the lower half of the cores, core 0
# left to the kernel), IO_CORES (default: none, the journal's workers unbound), DURABILITY
# (sync|async|none, default sync), BIN.
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-.build/release/crossbook}
seconds=${1:-3}
rounds=${2:-1}
cpus=$(nproc)
half=$((cpus / 2))
read -r -a shard_cores <<<"${SHARD_CORES:-$(seq -s ' ' "$half" $((cpus - 1)))}"
read -r -a load_cores <<<"${LOAD_CORES:-$(seq -s ' ' 1 $((half - 1)))}"
durability=${DURABILITY:-sync}
work=$(mktemp -d /tmp/crossbook-scale-XXXXXX)
trap 'pkill -f "crossbook-scale-" 2>/dev/null; rm -rf "$work"' EXIT
echo "machine: $cpus CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ); durability $durability; shard cores ${shard_cores[*]}; load cores ${load_cores[*]}; io cores ${IO_CORES:-unbound}; ${seconds} s flat out per load"
for round in $(seq 1 "$rounds"); do
  for n in ${SHARDS:-1 2 4}; do
    if [ "$n" -gt "${#shard_cores[@]}" ] || [ "$n" -gt "${#load_cores[@]}" ]; then
      echo "round $round, $n shards: skipped (${#shard_cores[@]} shard cores, ${#load_cores[@]} load cores)"; continue
    fi
    name=crossbook-scale-$$-$n
    {
      echo "[engine]"; echo "instance = \"$name\""; echo "durability = \"$durability\""
      [ -n "${IO_CORES:-}" ] && echo "io_cores = [${IO_CORES// /, }]"
      echo "[book]"; echo "orders = 262144"; echo "levels = 16384"
      for i in $(seq 0 $((n - 1))); do echo "[[shards]]"; echo "core = ${shard_cores[$i]}"; done
      for i in $(seq 0 $((n - 1))); do echo "[[symbols]]"; echo "name = \"S$i-USD\""; echo "shard = $i"; done
    } >"$work/$n.toml"
    rm -rf "$work/data"
    "$bin" run --config "$work/$n.toml" --data-dir "$work/data" --no-plugins --clean-stale 2>"$work/engine.log" &
    engine=$!
    for _ in $(seq 1 300); do "$bin" stat --instance "$name" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && break; sleep 0.1; done
    pids=()
    for i in $(seq 0 $((n - 1))); do
      taskset -c "${load_cores[$i]}" "$bin" load --instance "$name" --rate 0 --duration "$seconds" --first-symbol "$i" --symbols 1 --quiet >"$work/load-$i.txt" 2>&1 &
      pids+=($!)
    done
    wait "${pids[@]}"
    kill -INT "$engine"; wait "$engine"
    total=0; lines=""
    for i in $(seq 0 $((n - 1))); do
      rate=$(grep -o '([0-9]*/s)' "$work/load-$i.txt" | tr -d '(/s)')
      total=$((total + ${rate:-0}))
      lines="$lines | S$i: ${rate:-?}/s $(grep -o 'p50 [0-9.]* µs, p99 [0-9.]* µs' "$work/load-$i.txt")"
    done
    echo "round $round, $n shards: $total orders/s in all, $((total / n)) per shard$lines"
  done
done
