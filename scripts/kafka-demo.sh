#!/usr/bin/env bash
# `make kafka-demo`: a Kafka-protocol broker (Tansu, memory storage, a free loopback port), an
# engine with the Kafka ingress and egress, samples/orders.csv through the orders topic, and
# what the fills topic then holds, printed as replay-format trade lines on standard output:
# the same lines `crossbook replay --trades-only samples/orders.csv` prints. Logs go to
# standard error. Everything started is stopped at the end (and on Ctrl-C).
set -euo pipefail
kit=${KAFKA_KIT:-.build/kafka}
bin=.build/release
export LD_LIBRARY_PATH="$PWD/$kit/lib"
work=$(mktemp -d /tmp/crossbook-kafka-demo.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
broker=127.0.0.1:$port
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
log() { echo "kafka-demo: $*" >&2; }

"$kit/bin/tansu" broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" >"$work/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
log "broker (Tansu) on $broker"
# One partition each: the fills come out in the engine's order, which is the replay's order.
for topic in orders orders.dead-letter fills exec-reports depth; do "$bin/crossbook-kafka" create "$broker" "$topic" 1; done

cat >"$work/engine.toml" <<TOML
[engine]
instance = "kafka-demo-$$"
[[shards]]
[[symbols]]
name = "BTC-USD"
[[symbols]]
name = "ETH-USD"
[plugins]
[[plugins.load]]
name = "snapshot-file"
[[plugins.load]]
name = "kafka-egress"
config = { brokers = "$broker" }
[[plugins.load]]
name = "kafka-ingress"
config = { brokers = "$broker", topic = "orders", partitions = "0" }
TOML
"$bin/crossbook" run --config "$work/engine.toml" --no-pin --data-dir "$work/data" --clean-stale 2>"$work/engine.log" &
engine=$!
pids=("$engine" "${pids[@]}")
for _ in $(seq 1 300); do
  "$bin/crossbook" stat --instance "kafka-demo-$$" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && break
  kill -0 "$engine" 2>/dev/null || { cat "$work/engine.log" >&2; exit 1; }
  sleep 0.1
done
log "engine running (kafka-ingress and kafka-egress loaded)"

"$bin/crossbook-kafka" orders "$broker" orders 1 <samples/orders.csv 2>&1 | sed 's/^/kafka-demo: /' >&2
want=$("$bin/crossbook" replay --trades-only samples/orders.csv | grep -c '^T,' || true)
log "waiting for $want fills"
for _ in $(seq 1 100); do
  have=$("$bin/crossbook-kafka" consume "$broker" fills 1 1000 | wc -l)
  [ "$have" -ge "$want" ] && break
  sleep 0.2
done
log "the fills topic holds $have messages:"
"$bin/crossbook-kafka" consume "$broker" fills 1 1000 | cut -f5
"$bin/crossbook" stat --instance "kafka-demo-$$" --count 1 2>/dev/null | grep "^plugin kafka" >&2 || true
grep -E "kafka|dead" "$work/engine.log" | grep -v "^%" >&2 || true
