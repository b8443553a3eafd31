#!/usr/bin/env bash
# Two builds of the engine side by side on H1/D2: for each round, A then B, each a full
# bench/h1.sh round (MODES, default "none sync"; RATES, default 100000) with its own floor.
# Usage: bench/h1-ab.sh A-BINARY B-BINARY [ROUNDS]. Prints each run's lines prefixed A or B,
# then per mode the ack p50 and p99 of every run and the ratios B/A per round.
set -u
cd "$(dirname "$0")/.."
a=$1; b=$2; rounds=${3:-3}
out=$(mktemp /tmp/h1-ab-XXXXXX)
for round in $(seq 1 "$rounds"); do
  for which in A B; do
    bin=$a; [ "$which" = B ] && bin=$b
    BIN=$bin MODES="${MODES:-none sync}" RATES="${RATES:-100000}" bench/h1.sh 1 | sed "s/^/$which r$round: /" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import re, sys, collections
runs = collections.defaultdict(list)  # (which, mode) -> [(p50, p99)]
for line in open(sys.argv[1]):
    m = re.match(r"(A|B) r(\d+): round \d+, [^,]+, (\w+): .*p50 ([\d.]+) (µs|ms).*p99 ([\d.]+) (µs|ms)", line)
    if not m: continue
    f = lambda v, u: float(v) * (1000 if u == "ms" else 1)
    runs[(m[1], m[3])].append((f(m[4], m[5]), f(m[6], m[7])))
for mode in sorted({k[1] for k in runs}):
    A, B = runs[("A", mode)], runs[("B", mode)]
    if not A or not B: continue
    r50 = sorted(b[0] / a[0] for a, b in zip(A, B)); r99 = sorted(b[1] / a[1] for a, b in zip(A, B))
    print(f"{mode}: A p50/p99 µs {[(round(x), round(y)) for x, y in A]}  B {[(round(x), round(y)) for x, y in B]}")
    print(f"{mode}: B/A p50 min/median/max {r50[0]:.2f} / {r50[len(r50)//2]:.2f} / {r50[-1]:.2f}; p99 {r99[0]:.2f} / {r99[len(r99)//2]:.2f} / {r99[-1]:.2f}")
PY
rm -f "$out"
