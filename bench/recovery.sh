#!/usr/bin/env bash
# Recovery: fill a journal with N records (default 10,000,000) through the engine (a snapshot
# every 1,000,000 commands), stop it, then restart it RUNS times with its snapshots, and RUNS
# times with them removed (replaying the whole journal); report what each recovery logged.
# Usage: bench/recovery.sh [RECORDS] [RUNS] [DATA_DIR]
set -u
cd "$(dirname "$0")/.."
bin=.build/release/crossbook
records=${1:-10000000}
runs=${2:-3}
data=${3:-./bench-recovery-data}
instance=bench-rec-$$
wait_up() { for _ in $(seq 1 6000); do "$bin" stat --instance "$instance" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && return; sleep 0.01; done; }
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ)"
rm -rf "$data"
"$bin" run --instance "$instance" --clean-stale --durability async --data-dir "$data" --snapshot-every 1000000 2>/dev/null &
engine=$!
wait_up
"$bin" load --instance "$instance" --rate 0 --orders "$records" --duration 600 --quiet | head -1
kill -INT "$engine"; wait "$engine"
"$bin" journal verify "$data"
restart() {
  start=$(date +%s.%N)
  "$bin" run --instance "$instance" --clean-stale --durability async --data-dir "$data" --snapshot-every 0 2>/tmp/crossbook-recovery-$$.log &
  engine=$!
  wait_up
  up=$(date +%s.%N)
  echo "restart $1: $(grep -o 'recovered.*' /tmp/crossbook-recovery-$$.log | head -1); serving after $(awk "BEGIN {printf \"%.2f\", $up - $start}") s"
  kill -INT "$engine"; wait "$engine"
}
for run in $(seq 1 "$runs"); do restart "$run with snapshots"; done
mkdir -p "$data.snapshots" && mv "$data"/snapshot-* "$data.snapshots/" 2>/dev/null
for run in $(seq 1 "$runs"); do restart "$run without snapshots"; done
rm -rf "$data.snapshots"
rm -f /tmp/crossbook-recovery-$$.log
rm -rf "$data"
