#!/usr/bin/env bash
# Benchmark M1, instance → instance: a symbol moved back and forth between two engines through a
# redis-server started here (appendonly, appendfsync always: the route is the commit point and
# must survive Redis), on a free loopback port, stopped at the end.
#   bench/m1-instances.sh [BOOKS] [MOVES] [RATE]     e.g. bench/m1-instances.sh 1000,10000 20 20000
set -euo pipefail
cd "$(dirname "$0")/.."
BOOKS=${1:-1000,10000,100000}
MOVES=${2:-20}
RATE=${3:-20000}
BIN=${BIN:-.build/release/crossbook}
[ -x "$BIN" ] || { echo "build first: make release" >&2; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DIR=$(mktemp -d)
redis-server --port "$PORT" --bind 127.0.0.1 --dir "$DIR" --save '' --appendonly yes --appendfsync always >"$DIR/redis.log" 2>&1 &
REDIS=$!
trap 'kill $REDIS 2>/dev/null; wait $REDIS 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN" migrate-bench --redis "127.0.0.1:$PORT" --books "$BOOKS" --moves "$MOVES" --rate "$RATE" --data-dir "${DATA_DIR:-/tmp}"
