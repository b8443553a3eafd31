#!/usr/bin/env bash
# Interleaved A/B of two engine builds on the journal: each pair fills a fresh journal with
# RECORDS orders through the engine (async durability, flat out, one shard) and then replays it
# offline (`crossbook replay --journal`, the engine's own recovery), for A then B. Prints each
# run's fill rate and replay rate, and the B/A ratios (min/median/max) at the end. Odd pairs
# run A first, even pairs B first.
# Usage: bench/ab-journal.sh A/crossbook B/crossbook [RECORDS] [PAIRS]
set -u
a=$1; b=$2
records=${3:-5000000}
pairs=${4:-3}
data=$(mktemp -d /tmp/crossbook-abj-XXXXXX)
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "A=$a B=$b records=$records pairs=$pairs"
run() {  # bin label -> prints "fill_rate replay_rate"
  local bin=$1 inst=abj-$$-$RANDOM dir=$data/d
  rm -rf "$dir"
  "$bin" run --instance "$inst" --clean-stale --no-pin --no-plugins --durability async --data-dir "$dir" 2>/dev/null &
  local engine=$!
  for _ in $(seq 1 3000); do "$bin" stat --instance "$inst" --count 1 --interval 0.01 2>/dev/null | grep -q "state running" && break; sleep 0.01; done
  local fill
  fill=$("$bin" load --instance "$inst" --rate 0 --orders "$records" --duration 600 --quiet | head -1 | grep -o '([0-9]*/s)' | tr -dc 0-9)
  kill -INT "$engine"; wait "$engine"
  local replay
  replay=$("$bin" replay --journal "$dir" 2>&1 | grep -o '([0-9]* records/s)' | tr -dc 0-9)
  rm -rf "$dir"
  echo "$fill $replay"
}
fa=(); fb=(); ra=(); rb=()
# The second run of a pair is penalized on this VM (the disk and page cache the first left
# behind): odd pairs run A first, even pairs B first.
runA() { read -r f r < <(run "$a"); fa+=("$f"); ra+=("$r"); echo "pair $i A: fill $f orders/s, replay $r records/s"; }
runB() { read -r f r < <(run "$b"); fb+=("$f"); rb+=("$r"); echo "pair $i B: fill $f orders/s, replay $r records/s"; }
for i in $(seq 1 "$pairs"); do
  if [ $((i % 2)) = 1 ]; then runA; runB; else runB; runA; fi
done
ratios() {  # name, then A values, then B values (same count)
  local name=$1; shift; local n=$(($# / 2)); local -a x=("${@:1:$n}") y=("${@:$((n + 1))}")
  for i in $(seq 0 $((n - 1))); do awk "BEGIN {printf \"%.3f\n\", ${y[$i]} / ${x[$i]}}"; done | sort -n |
    awk -v name="$name" '{v[NR]=$1} END {printf "%s B/A: min %s / median %s / max %s\n", name, v[1], v[int((NR+1)/2)], v[NR]}'
}
ratios "fill" "${fa[@]}" "${fb[@]}"
ratios "replay" "${ra[@]}" "${rb[@]}"
rm -rf "$data"
