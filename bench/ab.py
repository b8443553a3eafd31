#!/usr/bin/env python3
"""Side-by-side comparison of two crossbook binaries on a workload, for a noisy machine.

Runs A and B alternately (A, B, A, B, ...) and reports each one's ops/s and the ratio B/A of
each adjacent pair as min/median/max: a pair shares the machine's mode, a ratio cancels it.

    bench/ab.py OLD_BINARY NEW_BINARY [w1|w2] [ROUNDS]

A "binary" may carry options for `crossbook workload`, quoted as one argument: to compare the
book's batch path with one command at a time in one build,

    bench/ab.py ".build/release/crossbook --batch 1" ".build/release/crossbook --batch 16" w2
"""
import shlex
import statistics
import subprocess
import sys


def rate(binary, workload):
    words = shlex.split(binary)
    out = subprocess.run([words[0], "workload", workload] + words[1:], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if " run 1: " in line:
            return float(line.split("ops in ")[1].split(",")[1].strip().rstrip("M ops/s"))
    raise SystemExit(f"no rate in the output of {binary}: {out}")


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    a, b = sys.argv[1], sys.argv[2]
    workload = sys.argv[3] if len(sys.argv) > 3 else "w1"
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    ra, rb, ratios = [], [], []
    for i in range(rounds):
        # Odd rounds A first, even rounds B first: the order within a pair must not decide.
        if i % 2 == 0:
            x = rate(a, workload)
            y = rate(b, workload)
        else:
            y = rate(b, workload)
            x = rate(a, workload)
        ra.append(x)
        rb.append(y)
        ratios.append(y / x)

    def fmt(values):
        return f"min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}"

    print(f"{workload}, {rounds} rounds (M ops/s)")
    print(f"  A {a}: {fmt(ra)}")
    print(f"  B {b}: {fmt(rb)}")
    print(f"  B/A per pair: {fmt(ratios)}")


if __name__ == "__main__":
    main()
