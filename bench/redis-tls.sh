#!/usr/bin/env bash
# What TLS to Redis costs the Redis plugins (plugins/redis-routing/redis_tls.h: OpenSSL relayed to
# hiredis 0.14): one redis-server with a plain and a TLS port (appendfsync always, a client
# certificate required), certificates made here, SET/GET of 100 bytes and 320 KB, 200 each, twice.
#   bench/redis-tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$(mktemp -d)
trap 'kill $REDIS 2>/dev/null; wait $REDIS 2>/dev/null; rm -rf "$DIR"' EXIT
REDIS=
scripts/test-certs.sh "$DIR"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PLAIN=$(free_port); TLS=$(free_port)
redis-server --port "$PLAIN" --tls-port "$TLS" --bind 127.0.0.1 --tls-cert-file "$DIR/server.crt" --tls-key-file "$DIR/server.key" \
  --tls-ca-cert-file "$DIR/ca.crt" --save '' --appendonly yes --appendfsync always --dir "$DIR" >"$DIR/redis.log" 2>&1 &
REDIS=$!
for _ in $(seq 50); do redis-cli -p "$PLAIN" ping >/dev/null 2>&1 && break; sleep 0.1; done
cc -std=c11 -O2 -I plugins/redis-routing bench/c/redis-tls.c -o "$DIR/redis-tls" -lhiredis -lssl -lcrypto -lpthread
echo "redis-tls ($(nproc) CPUs, $(date -u +%FT%TZ)): plain port $PLAIN, TLS port $TLS"
"$DIR/redis-tls" "$PLAIN" "$TLS" "$DIR"
