#!/usr/bin/env bash
# `make kafka-demo`: a Kafka-protocol broker (Tansu, memory storage, a free loopback port), an
# engine with the Kafka ingress and egress, samples/orders.csv through the orders topic, and
# what the fills topic then holds, printed as replay-format trade lines on standard output:
# the same lines `crossbook replay --trades-only samples/orders.csv` prints. Logs go to
# standard error. Everything started is stopped at the end (and on Ctrl-C).
set -euo pipefail
source scripts/kafka-env.sh
log() { echo "kafka-demo: $*" >&2; }

# One partition each: the fills come out in the engine's order, which is the replay's order.
start_broker orders orders.dead-letter fills exec-reports depth
log "broker (Tansu) on $broker"

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
start_engine "kafka-demo-$$"
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
