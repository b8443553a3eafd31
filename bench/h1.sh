#!/usr/bin/env bash
# H1 (hot standby): what a hot standby costs the primary's acknowledgements. One shard, sync
# durability, 300,000 orders from `crossbook load` (a separate process) at RATE orders/s, in
# three configurations run in turn (A, B, C, A, B, C, ...): no replication; a standby on this
# host in async mode; a standby on this host in sync mode (output released once the standby
# has the command durable too). Same disk for both journals: the standby's fdatasync competes
# with the primary's. Usage: bench/h1.sh [ROUNDS] (RATES, default 20000: a list, 0 = flat out).
# D2 (issue 12) is `RATES="100000 0" bench/h1.sh 3`: each round also prints the floor of a sync
# acknowledgement here, measured in the same run: a loopback TCP round trip (64-byte ping-pong)
# and a pwrite + fdatasync of 2 KiB in the data directory's file system. MODES (default "none
# async sync") picks the configurations; BIN the binary (A/B: bench/h1-ab.sh); SECRET_FILE
# authenticates the pair with that secret ([replication] secret_file).
set -u
cd "$(dirname "$0")/.."
bin=${BIN:-.build/release/crossbook}
rounds=${1:-3}
rates=${RATES:-${RATE:-20000}}
work=$(mktemp -d /tmp/crossbook-h1-XXXXXX)
trap 'pkill -f "crossbook-h1-" 2>/dev/null; rm -rf "$work"' EXIT
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ); rates $rates orders/s (0: flat out), 300000 orders"
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
  [ "$4" = none ] || [ -z "${SECRET_FILE:-}" ] || echo "secret_file = \"$SECRET_FILE\"" >>"$work/$1.toml"
}
wait_up() { for _ in $(seq 1 300); do "$bin" stat --instance "$1" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && return; sleep 0.1; done; }
rtt() {  # loopback TCP round trips, 64 bytes each way: p50 and p99 in µs
  python3 - <<'PY'
import socket, threading, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def echo():
    c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(64)
        if not d: return
        c.sendall(d)
threading.Thread(target=echo, daemon=True).start()
s = socket.create_connection(srv.getsockname()); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
t = []
for _ in range(5000):
    a = time.perf_counter_ns(); s.sendall(b"x" * 64); n = 0
    while n < 64: n += len(s.recv(64 - n))
    t.append((time.perf_counter_ns() - a) / 1000)
t.sort(); print(f"loopback TCP round trip p50 {t[len(t)//2]:.1f} µs, p99 {t[int(len(t)*0.99)]:.1f} µs")
PY
}
for round in $(seq 1 "$rounds"); do
 for rate in $rates; do
  for mode in ${MODES:-none async sync}; do
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
      for _ in $(seq 1 100); do "$bin" replication --instance "$p" 2>/dev/null | grep -q " standbys 1 " && break; sleep 0.1; done
      # Sync: until the standby has caught up the primary runs alone; wait for it to engage.
      [ "$mode" = sync ] && for _ in $(seq 1 100); do "$bin" replication --instance "$p" 2>/dev/null | grep -q "engaged 1" && break; sleep 0.1; done
    fi
    out=$("$bin" load --instance "$p" --rate "$rate" --orders 300000 --duration 60 --quiet)
    lag=$([ "$mode" = none ] || "$bin" replication --instance "$p" | grep "^serving" | grep -o "lag [0-9]*$")
    kill -INT "$primary"; wait "$primary"
    [ -n "$standby" ] && { kill -INT "$standby"; wait "$standby"; }
    echo "round $round, $([ "$rate" = 0 ] && echo "flat out" || echo "$rate/s"), ${mode}: $(echo "$out" | tr '\n' ' ' | sed 's/summary: //; s/submit→ack latency: /| /')${lag:+| after the load: $lag}"
  done
 done
 echo "round $round, floor: $(rtt); $("$bin" disk-floor --directory "$work" --size 2048 --count 2000)"
done
