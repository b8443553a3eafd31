#!/usr/bin/env bash
# H1 (hot standby): what a hot standby costs the primary's acknowledgements. One shard, sync
# durability, 300,000 orders from `crossbook load` (a separate process) at RATE orders/s, in
# three configurations run in turn (A, B, C, A, B, C, ...): no replication; a standby on this
# host in async mode; a standby on this host in sync mode (output released once the standby
# has the command durable too). Same disk for both journals: the standby's fdatasync competes
# with the primary's. Usage: bench/h1.sh [ROUNDS] (RATE, default 20000).
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-.build/release/crossbook}
rounds=${1:-3}
rate=${RATE:-20000}
work=$(mktemp -d /tmp/crossbook-h1-XXXXXX)
trap 'pkill -f "crossbook-h1-" 2>/dev/null; rm -rf "$work"' EXIT
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ); $rate orders/s, 300000 orders"
config() {  # name listen peer mode
  cat >"$work/$1.toml" <<TOML
[engine]
instance = "$1"
durability = "sync"
[[symbols]]
name = "BTC-USD"
[book]
orders = 262144
TOML
  [ "$4" = none ] || cat >>"$work/$1.toml" <<TOML
[replication]
listen = "127.0.0.1:$2"
peer = "127.0.0.1:$3"
mode = "$4"
TOML
}
wait_up() { for _ in $(seq 1 300); do "$bin" stat --instance "$1" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && return; sleep 0.1; done; }
for round in $(seq 1 "$rounds"); do
  for mode in none async sync; do
    p=crossbook-h1-p-$$; s=crossbook-h1-s-$$
    pa=$((20000 + RANDOM % 20000)); pb=$((pa + 1))
    config "$p" "$pa" "$pb" "$mode"; config "$s" "$pb" "$pa" "$mode"
    rm -rf "$work/dp" "$work/ds"
    "$bin" run --config "$work/$p.toml" --data-dir "$work/dp" --no-plugins --no-pin --clean-stale 2>"$work/p.log" &
    primary=$!
    wait_up "$p"
    standby=""
    if [ "$mode" != none ]; then
      "$bin" run --config "$work/$s.toml" --data-dir "$work/ds" --no-plugins --no-pin --clean-stale --standby 2>"$work/s.log" &
      standby=$!
      wait_up "$s"
      for _ in $(seq 1 100); do "$bin" replication --instance "$p" 2>/dev/null | grep -q "standbys 1" && break; sleep 0.1; done
    fi
    out=$("$bin" load --instance "$p" --rate "$rate" --orders 300000 --duration 60 --quiet)
    lag=$([ "$mode" = none ] || "$bin" replication --instance "$p" | grep "^serving" | grep -o "lag [0-9]*$")
    kill -INT "$primary"; wait "$primary"
    [ -n "$standby" ] && { kill -INT "$standby"; wait "$standby"; }
    echo "round $round, ${mode}: $(echo "$out" | tr '\n' ' ' | sed 's/summary: //; s/submit→ack latency: /| /')${lag:+| after the load: $lag}"
  done
done
