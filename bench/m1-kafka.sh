#!/usr/bin/env bash
# Benchmark M1 for a symbol whose orders come from Kafka, instance → instance: the pause of the
# moving symbol when the partition is the queue of what waits for the move. Two engines
# (`crossbook run`, kafka-ingress, redis-routing, snapshot-redis, sync durability, unpinned) read
# one orders topic (2 partitions) of a Tansu broker; HOT-USD moves between them MOVES times while
# a producer writes RATE orders/s (half of them HOT-USD). The pause of a move: from the source's
# transferOut record (the export, journaled) to the first HOT-USD command the target applies
# after its thaw, both engine times of this host's clock, from the two journals. It includes the
# target reading the partition again from the source's positions (the rewind).
#   bench/m1-kafka.sh [MOVES] [RATE]       e.g. bench/m1-kafka.sh 20 2000
# Needs `make release c-plugins kafka-kit` (the Tansu broker and librdkafka 2.16 in .build/kafka).
set -euo pipefail
cd "$(dirname "$0")/.."
MOVES=${1:-20}
RATE=${2:-2000}
BIN=$PWD/.build/release/crossbook
KAFKA=$PWD/.build/release/crossbook-kafka
KIT=$PWD/.build/kafka
for f in "$BIN" "$KAFKA" "$KIT/bin/tansu" .build/release/libcrossbook-kafka-ingress.so; do
    [ -e "$f" ] || { echo "missing $f: make release c-plugins kafka-kit" >&2; exit 1; }
done
export LD_LIBRARY_PATH=$KIT/lib
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
RPORT=$(port)
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$WORK" --save '' --appendonly yes --appendfsync always >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
KPORT=$(port)
"$KIT/bin/tansu" broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" >"$WORK/tansu.log" 2>&1 &
PIDS+=($!)
BROKER=127.0.0.1:$KPORT
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 100); do "$KAFKA" create "$BROKER" orders 2 >/dev/null 2>&1 && break; sleep 0.2; done
"$KAFKA" create "$BROKER" orders.dead-letter 1 >/dev/null

config() { # instance, symbols lines
    cat <<EOF
[engine]
instance = "$1"
durability = "sync"
transfer_timeout_s = 5
lag_timeout_ms = 5000
[[shards]]
[[shards]]
[book]
orders = 65536
levels = 4096
$2
[plugins]
[[plugins.load]]
name = "snapshot-redis"
config = { redis = "127.0.0.1:$RPORT", prefix = "m1k:", timeout_ms = "500" }
[[plugins.load]]
name = "redis-routing"
config = { redis = "127.0.0.1:$RPORT", prefix = "m1k:", timeout_ms = "500", accept_transfers = "no" }
[[plugins.load]]
name = "kafka-ingress"
config = { brokers = "$BROKER", topic = "orders", partitions = "0-1" }
EOF
}
config m1ka $'[[symbols]]\nname = "HOT-USD"\nid = 1\nshard = 0\n[[symbols]]\nname = "ETH-USD"\nid = 2\nshard = 1' >"$WORK/a.toml"
config m1kb $'[[symbols]]\nname = "SOL-USD"\nid = 3\nshard = 0' >"$WORK/b.toml"
ENGINES=()
for k in a b; do
    "$BIN" run --config "$WORK/$k.toml" --directory "$WORK/dir-$k" --data-dir "$WORK/data-$k" --no-pin --clean-stale \
        >"$WORK/engine-$k.log" 2>&1 &
    PIDS+=($!)
    ENGINES+=($!)
done
for k in a b; do
    for _ in $(seq 200); do [ -S "$WORK/dir-$k/control.sock" ] && break; sleep 0.1; done
done
"$BIN" symbol add SOL-USD --away --id 3 --directory "$WORK/dir-a" >/dev/null
"$BIN" symbol add HOT-USD --away --id 1 --directory "$WORK/dir-b" >/dev/null
"$BIN" symbol add ETH-USD --away --id 2 --directory "$WORK/dir-b" >/dev/null
sleep 1

# The load: RATE order lines a second (HOT-USD half, ETH-USD and SOL-USD a quarter each), limit
# orders on both sides around 100 (most trade, the books stay shallow), until told to stop.
mkfifo "$WORK/load.fifo"
python3 -c '
import sys, time, random
rate = int(sys.argv[1]); random.seed(5)
out = open(sys.argv[2], "w")
symbols = ["HOT-USD", "HOT-USD", "ETH-USD", "SOL-USD"]
start = time.time(); n = 0
while True:
    due = int((time.time() - start) * rate)
    while n < due:
        n += 1
        side = "B" if random.random() < 0.5 else "S"
        out.write("N,%s,%d,1,%s,LMT,%d,%d,GTC\n" % (symbols[n % 4], n, side, 98 + random.randint(0, 4), 1 + random.randint(0, 3)))
    out.flush()
    time.sleep(0.005)
' "$RATE" "$WORK/load.fifo" &
LOADPY=$!
PIDS+=($LOADPY)
"$KAFKA" orders "$BROKER" orders 2 <"$WORK/load.fifo" >/dev/null 2>"$WORK/producer.log" &
PRODUCER=$!
PIDS+=($PRODUCER)
sleep 2

dirs=("$WORK/dir-a" "$WORK/dir-b")
names=(m1ka m1kb)
shards=(0 1)
failed=0
for i in $(seq "$MOVES"); do
    from=$(( (i + 1) % 2 )); to=$(( i % 2 ))
    if ! "$BIN" migrate HOT-USD --instance "${names[$from]}" --directory "${dirs[$from]}" --to-instance "${names[$to]}" \
            --to-directory "${dirs[$to]}" --to-shard "${shards[$to]}" >>"$WORK/migrate.log" 2>&1; then
        failed=$((failed + 1))
        sleep 6  # the source takes it back after transfer_timeout_s
    fi
    sleep 0.5
done
kill "$LOADPY" 2>/dev/null || true
sleep 1
kill "$PRODUCER" 2>/dev/null || true
sleep 2
for k in a b; do "$BIN" stat --directory "$WORK/dir-$k" --count 1 --interval 0.2 2>/dev/null | grep -E "ingress dropped|migrations" | sed "s/^/engine $k: /" || true; done
grep -h "reading again from offset" "$WORK"/engine-*.log | sed -E 's/.*(orders#[0-9]+: .*)/\1/' | tail -3 || true
# Stop the engines (SIGTERM), then read their journals.
for p in "${ENGINES[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${ENGINES[@]}"; do wait "$p" 2>/dev/null || true; done
for k in a b; do
    for s in 0 1; do "$BIN" journal dump "$WORK/data-$k" --shard "$s" >"$WORK/dump-$k$s.txt" 2>/dev/null || true; done
done
python3 - "$WORK" "$MOVES" "$RATE" "$failed" <<'EOF'
import re, sys, datetime
work, moves, rate, failed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def ns(iso):
    d, frac = iso.rstrip("Z").split(".")
    t = datetime.datetime.strptime(d, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp()) * 10**9 + int(frac)
outs, ins = {}, {}  # epoch -> time (transferOut); epoch -> (engine, shard, index) of transferIn
records = {}
for e in "ab":
    for s in "01":
        lines = open(f"{work}/dump-{e}{s}.txt").read().splitlines()
        rec = []
        for line in lines:
            m = re.search(r"engine time (\S+): (.*)$", line)
            if not m: continue
            rec.append((ns(m.group(1)), m.group(2)))
        records[(e, s)] = rec
        for i, (t, text) in enumerate(rec):
            m = re.match(r"admin transfer-out symbol 1 to instance \S+ at route epoch (\d+)", text)
            if m: outs[int(m.group(1))] = t
            m = re.match(r"admin transfer-in symbol 1 from instance \S+ at route epoch (\d+)", text)
            if m: ins[int(m.group(1))] = (e, s, i)
pauses = []
for epoch, t0 in sorted(outs.items()):
    if epoch not in ins: continue
    e, s, i = ins[epoch]
    rec = records[(e, s)]
    thawed = False
    for t, text in rec[i + 1:]:
        if text == "admin thaw symbol 1": thawed = True; continue
        if text == "admin drop symbol 1": break
        if thawed and re.match(r"[NCR],#1,", text):
            pauses.append((t - t0) / 1e6); break
pauses.sort()
def pct(p): return pauses[min(len(pauses) - 1, int(p * len(pauses)))] if pauses else float("nan")
print(f"M1 Kafka-fed, instance -> instance: {len(pauses)} moves measured ({failed} refused), {rate} orders/s "
      f"(HOT-USD {rate // 2}/s: a command every {2000 / rate:.2f} ms)")
print(f"pause ms: p50 {pct(0.5):.1f}  p90 {pct(0.9):.1f}  p99 {pct(0.99):.1f}  max {pauses[-1] if pauses else float('nan'):.1f}")
EOF
