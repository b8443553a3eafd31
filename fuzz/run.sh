#!/usr/bin/env bash
# Builds the fuzz targets (libFuzzer, `swift build --sanitize=fuzzer`) and runs each for SECONDS
# over its committed corpus (fuzz/corpus/<target>; new inputs go to a scratch directory, not
# into the repository). A crash stops with the input written to fuzz/artifacts/ and exit 1.
# Usage: fuzz/run.sh [SECONDS] (make test: 5; make fuzz: 600)
set -u
cd "$(dirname "$0")"
seconds=${1:-5}
swift build -c release --sanitize=fuzzer >/tmp/crossbook-fuzz-build.log 2>&1 || { tail -30 /tmp/crossbook-fuzz-build.log; exit 1; }
# C targets: the Kafka ingress's JSON order parser (ASan and UBSan too).
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I ../C/CPluginABI/include -I ../plugins/kafka \
  c/order-json.c ../plugins/kafka/order_json.c -o .build/release/fuzz-order-json >>/tmp/crossbook-fuzz-build.log 2>&1 \
  || { tail -30 /tmp/crossbook-fuzz-build.log; exit 1; }
mkdir -p artifacts
failed=0
for target in command-record text-codec journal-scan book-snapshot admin-record config replication-frame transfer-blob shard-snapshot order-json; do
  work=$(mktemp -d)
  max_len=4096
  [ "$target" = journal-scan ] && max_len=20000
  SWIFT_BACKTRACE=enable=no .build/release/fuzz-$target "$work" "corpus/$target" -max_total_time="$seconds" \
    -max_len="$max_len" -artifact_prefix="artifacts/$target-" -print_final_stats=1 >"$work.log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work.log" | grep -o '[0-9]*$')
  cov=$(grep -o 'cov: [0-9]*' "$work.log" | tail -1)
  if [ $rc -ne 0 ]; then
    echo "fuzz-$target: FAILED (exit $rc) after ${runs:-?} runs"; grep -E "ERROR|Assertion|Fatal|panic|Test unit" "$work.log" | head -5
    failed=1
  else
    echo "fuzz-$target: ${runs:-?} runs in ${seconds} s, ${cov:-cov ?}, no crash"
  fi
  rm -rf "$work" "$work.log"
done
exit $failed
