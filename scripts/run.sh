#!/usr/bin/env bash
# `make run`: the engine on its embedded default (instance "default", one shard pinned to the
# last CPU, four symbols) and a load process beside it, showing live throughput and latency.
# Ctrl-C stops both: the load prints its summary, the engine drains and removes its files.
# RATE (orders/s, 0 = flat out, default 100000) and DURATION (seconds, 0 = until Ctrl-C).
set -u
bin=${BIN:-.build/release/crossbook}
rate=${RATE:-100000}
duration=${DURATION:-0}

"$bin" run --clean-stale &
engine=$!
stop() {
  kill -INT "$engine" 2>/dev/null
  wait "$engine"
}
trap 'stop; exit 0' INT TERM
# Ready when its state is running (a restart replays the journal first).
for _ in $(seq 1 3000); do
  "$bin" stat --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && break
  kill -0 "$engine" 2>/dev/null || { wait "$engine"; exit 1; }
  sleep 0.1
done
"$bin" load --rate "$rate" --duration "$duration" --symbols 4
status=$?
stop
exit $status
