#!/usr/bin/env bash
# `make migrate-demo`: an engine with two shards (sync durability, a journal in a temporary
# directory), `crossbook load` sending orders to its symbols from another process, and BTC-USD
# moved between the shards ten times while it trades (`crossbook migrate`), each migration's
# report printed: resting orders moved, commands that waited, the pause and where it went.
# Then the load's summary and `crossbook route list`. Everything started is stopped at the end.
# Redis routing (issue 11, item 1) is not built: the routes live in the engine's control file.
# RATE=orders/s of the load (default 20000), MOVES=migrations (default 10).
set -euo pipefail
bin=.build/release/crossbook
rate=${RATE:-20000}
moves=${MOVES:-10}
work=$(mktemp -d /tmp/crossbook-migrate-demo-XXXXXX)
instance="migrate-demo-$$"
engine=""
load=""
cleanup() {
  [ -n "$load" ] && kill "$load" 2>/dev/null || true
  [ -n "$engine" ] && kill -INT "$engine" 2>/dev/null && wait "$engine" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
cat >"$work/engine.toml" <<TOML
[engine]
instance = "$instance"
durability = "sync"
[[shards]]
[[shards]]
[[symbols]]
name = "BTC-USD"
shard = 0
[[symbols]]
name = "ETH-USD"
shard = 1
TOML
"$bin" run --config "$work/engine.toml" --data-dir "$work/data" --no-pin --no-plugins --clean-stale >"$work/engine.log" 2>&1 &
engine=$!
for _ in $(seq 1 500); do "$bin" route list --instance "$instance" >/dev/null 2>&1 && break; sleep 0.02; done
"$bin" load --instance "$instance" --rate "$rate" --duration 0 --symbols 2 --quiet >"$work/load.log" 2>&1 &
load=$!
sleep 1
echo "migrate-demo: engine with 2 shards, load $rate orders/s over BTC-USD and ETH-USD from another process"
for i in $(seq 1 "$moves"); do
  target=$((i % 2))
  "$bin" migrate BTC-USD --to-shard "$target" --instance "$instance" | head -1
  sleep 0.3
done
kill -INT "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true
load=""
echo "migrate-demo: the load's summary:"
sed 's/^/  /' "$work/load.log" | tail -3
echo "migrate-demo: routes now:"
"$bin" route list --instance "$instance" | sed 's/^/  /'
