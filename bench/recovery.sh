#!/usr/bin/env bash
# Recovery: fill a journal with N records (default 10,000,000) through the engine, stop it, then
# restart it RUNS times and report what each restart's recovery logged (records/s, time).
# Snapshots are not yet part of recovery: every restart replays the whole journal.
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
"$bin" run --instance "$instance" --clean-stale --durability async --data-dir "$data" 2>/dev/null &
engine=$!
wait_up
"$bin" load --instance "$instance" --rate 0 --orders "$records" --duration 600 --quiet | head -1
kill -INT "$engine"; wait "$engine"
"$bin" journal verify "$data"
for run in $(seq 1 "$runs"); do
  start=$(date +%s.%N)
  "$bin" run --instance "$instance" --clean-stale --durability async --data-dir "$data" 2>/tmp/crossbook-recovery-$$.log &
  engine=$!
  wait_up
  up=$(date +%s.%N)
  echo "restart $run: $(grep -o 'recovered.*' /tmp/crossbook-recovery-$$.log | head -1); serving after $(echo "$up - $start" | bc) s"
  kill -INT "$engine"; wait "$engine"
done
rm -f /tmp/crossbook-recovery-$$.log
rm -rf "$data"
