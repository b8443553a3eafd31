#!/usr/bin/env bash
# D1: one shard, sync durability, 1,000,000 orders from a separate process, flat out and at
# 100k orders/s: orders/s, journal batch size, ack latency; then, same file system, the floor:
# pwrite + fdatasync of the mean batch size in a loop. Usage: bench/d1.sh [DATA_DIR] [ROUNDS]
# CONFIG=file.toml runs the engine on that config (e.g. [engine] completion_wait_us).
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-.build/release/crossbook}
data=${1:-./bench-d1-data}
rounds=${2:-2}
instance=bench-d1-$$
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ); data in $data ($(df -T "$(dirname "$data")" | awk 'NR==2 {print $2}'))"
for round in $(seq 1 "$rounds"); do
  for rate in ${RATES:-0 100000}; do
    rm -rf "$data"
    "$bin" run ${CONFIG:+--config "$CONFIG"} --instance "$instance" --clean-stale --durability sync --data-dir "$data" 2>/dev/null &
    engine=$!
    for _ in $(seq 1 3000); do "$bin" stat --instance "$instance" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && break; sleep 0.1; done
    label=$([ "$rate" = 0 ] && echo "flat out" || echo "$rate/s")
    out=$(taskset -c 0 "$bin" load --instance "$instance" --rate "$rate" --orders 1000000 --duration 60 --quiet)
    stat=$("$bin" stat --instance "$instance" --count 1 --interval 0.1)
    batches=$(echo "$stat" | grep -o 'journal_batches=[0-9]*' | cut -d= -f2)
    bytes=$(echo "$stat" | grep -o 'journal_bytes=[0-9]*' | cut -d= -f2)
    kill -INT "$engine"; wait "$engine"
    mean=$(( ${bytes:-0} / (${batches:-1} > 0 ? ${batches:-1} : 1) ))
    echo "round $round, $label: $(echo "$out" | tr '\n' ' ' | sed 's/summary: //; s/submit→ack latency: /| /') | journal: ${batches:-?} batches, mean ${mean} bytes"
    "$bin" disk-floor --directory "$(dirname "$data")" --size "$mean" --count 2000 | sed "s/^/round $round, floor: /"
  done
done
rm -rf "$data"
