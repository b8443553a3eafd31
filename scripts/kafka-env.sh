# Sourced by scripts/kafka-demo.sh and bench/k1.sh: the Kafka kit, a scratch directory, a Tansu
# broker on a free loopback port with one-partition topics, an engine started from a config, and
# one cleanup that stops everything started (on exit and on Ctrl-C).
kit=${KAFKA_KIT:-.build/kafka}
bin=.build/release
export LD_LIBRARY_PATH="$PWD/$kit/lib"
work=$(mktemp -d /tmp/crossbook-kafka.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
broker=127.0.0.1:$port
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# start_broker TOPIC...: the broker, then each topic with one partition.
start_broker() {
  "$kit/bin/tansu" broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" >"$work/broker.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  for topic in "$@"; do "$bin/crossbook-kafka" create "$broker" "$topic" 1 2>/dev/null; done
}

# start_engine INSTANCE: `crossbook run` on $work/engine.toml (log in $work/engine.log), stopped
# first by cleanup; returns once it serves.
start_engine() {
  "$bin/crossbook" run --config "$work/engine.toml" --no-pin --data-dir "$work/data" --clean-stale 2>"$work/engine.log" &
  local engine=$!
  pids=("$engine" "${pids[@]}")
  for _ in $(seq 1 300); do
    "$bin/crossbook" stat --instance "$1" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && return 0
    kill -0 "$engine" 2>/dev/null || { cat "$work/engine.log" >&2; return 1; }
    sleep 0.1
  done
  return 1
}
