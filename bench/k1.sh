#!/usr/bin/env bash
# Benchmark K1: Kafka → engine → Kafka on this machine, against its floor on the same broker.
#   floor: messages produced to a topic and consumed back, no engine (crossbook-kafka floor)
#   k1:    JSON orders (a resting buy, then a sell that trades with it) into the orders topic,
#          through kafka-ingress, one shard (sync durability), kafka-egress, read back from the
#          fills topic; latency = the sell's produce → its fill consumed (crossbook-kafka k1)
# Each at fixed rates and flat out, floor and engine alternating, ROUNDS times (default 2).
# The engine's shard is not pinned (2 vCPUs here: the broker, the tool and the engine share them).
# The egress publishes only the fills (FILLS_ONLY=0: exec reports and depth too, 3.5 messages an
# order here, more than this broker takes flat out).
# Usage: bench/k1.sh [ROUNDS] [COUNT]   (after `make release kafka-kit`)
set -euo pipefail
rounds=${1:-2}
count=${2:-20000}
source scripts/kafka-env.sh
start_broker orders orders.dead-letter fills exec-reports depth

cat >"$work/engine.toml" <<TOML
[engine]
instance = "k1-$$"
[[shards]]
[book]
orders = 1048576
levels = 4096
[[symbols]]
name = "BTC-USD"
[plugins]
[[plugins.load]]
name = "snapshot-file"
[[plugins.load]]
name = "kafka-egress"
config = { brokers = "$broker"$( [ "${FILLS_ONLY:-1}" = 1 ] && echo ', exec_reports_topic = "-", depth_topic = "-"' ) }
[[plugins.load]]
name = "kafka-ingress"
config = { brokers = "$broker", topic = "orders", partitions = "0" }
TOML
start_engine "k1-$$"

echo "K1 (fills only: ${FILLS_ONLY:-1}) on $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ); broker Tansu (memory), librdkafka 2.16; $count messages a run"
run=0
for round in $(seq 1 "$rounds"); do
  for rate in 1000 10000 0; do
    run=$((run + 1))
    # A fresh floor topic each run; the orders of each k1 run have ids of their own.
    "$bin/crossbook-kafka" create "$broker" "floor-$run" 1 2>/dev/null
    "$bin/crossbook-kafka" floor "$broker" "floor-$run" "$rate" "$count" || true
    "$bin/crossbook-kafka" k1 "$broker" orders fills "$rate" "$count" "$((run * count))" || true
  done
done
"$bin/crossbook" stat --instance "k1-$$" --count 1 2>/dev/null | grep "^plugin kafka" || true
