#!/usr/bin/env bash
# Certificates for trying TLS to Redis on loopback (the tests, bench/redis-tls.sh): a CA, a
# server certificate for 127.0.0.1 and localhost, a client certificate, and another CA that
# signed neither (ECDSA P-256, 2 days), written to DIR; keys mode 600. Never for production.
#   scripts/test-certs.sh DIR
set -euo pipefail
cd "$1"
key="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $key -keyout ca.key -out ca.crt -days 2 -subj "/CN=crossbook test CA" 2>/dev/null
openssl req -x509 $key -keyout other.key -out other.crt -days 2 -subj "/CN=another CA" 2>/dev/null
for who in server client; do
  openssl req $key -keyout $who.key -out $who.csr -subj "/CN=$who" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > $who.ext
  openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out $who.crt -days 2 -extfile $who.ext 2>/dev/null
done
chmod 600 ./*.key
