#!/usr/bin/env bash
# End-to-end throughput of an axum hello-world without and with ApiKeyLayer, on 127.0.0.1, and
# of the same hello-world behind the `floor`: the unavoidable work done by hand (parse the header,
# SHA-256, one HashMap lookup, one constant-time compare, one identity inserted).
# Each round runs the three servers in turn, each with wrk: 2 threads, 64 connections, DURATION
# seconds; the order rotates from round to round so that no server always runs first. Prints requests per second of each run and each round's ratios, then the
# ratios of the totals and the medians of the rounds' ratios. Not run in CI.
#
# On a shared 2-core machine one 10 s run can be off by 15% or more (wrk and the server share the
# cores): run enough rounds to see past that, and read the layer against the floor as well as
# against no check at all.
#
#   bash benches/http_load.sh            # ROUNDS=6 DURATION=10s by default
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-6}"
DURATION="${DURATION:-10s}"

if ! command -v wrk >/dev/null; then
  echo "installing wrk from Debian's packages" >&2
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
# A bench target (not an example): `cargo bench` builds it with the bench profile and prints its path.
binary=$(cargo bench --bench hello_load --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')

# Starts the server, runs wrk against it, prints requests/s, stops the server. Every server gets
# the same request, key included: the one without the layer ignores it.
run() {
  local flag="$1" output address key report
  output=$(mktemp)
  "$binary" $flag >"$output" &
  local pid=$!
  for _ in $(seq 1 50); do [ "$(wc -l <"$output")" -ge 2 ] && break; sleep 0.1; done
  address=$(sed -n 1p "$output")
  key=$(sed -n 2p "$output")
  case "$address" in 127.0.0.1:*) ;; *) echo "unexpected address $address" >&2; kill "$pid"; exit 1 ;; esac
  report=$(wrk -t2 -c64 -d"$DURATION" -H "Authorization: Bearer $key" "http://$address/")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$output"
  # Every answer must be a 200, or the figure measures refusals.
  if grep -q "Non-2xx" <<<"$report"; then echo "wrk saw non-2xx answers:" >&2; echo "$report" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$report"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b / a}'; }
median() { sort -n | awk '{r[NR] = $1} END {print (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2}'; }

without=0; with=0; floor=0; layer_ratios=(); floor_ratios=()
for round in $(seq 1 "$ROUNDS"); do
  case $((round % 3)) in
    1) a=$(run "--plain"); b=$(run "--layer"); f=$(run "--floor") ;;
    2) b=$(run "--layer"); f=$(run "--floor"); a=$(run "--plain") ;;
    0) f=$(run "--floor"); a=$(run "--plain"); b=$(run "--layer") ;;
  esac
  layer_ratios+=("$(ratio "$a" "$b")"); floor_ratios+=("$(ratio "$a" "$f")")
  printf 'round %d: without %s req/s, with layer %s req/s (%s), floor %s req/s (%s)\n' \
    "$round" "$a" "$b" "$(ratio "$a" "$b")" "$f" "$(ratio "$a" "$f")"
  without=$(awk -v s="$without" -v x="$a" 'BEGIN {print s + x}')
  with=$(awk -v s="$with" -v x="$b" 'BEGIN {print s + x}')
  floor=$(awk -v s="$floor" -v x="$f" 'BEGIN {print s + x}')
done
printf 'with layer / without: %s over all rounds, median of rounds %s\n' \
  "$(ratio "$without" "$with")" "$(printf '%s\n' "${layer_ratios[@]}" | median)"
printf 'floor / without:      %s over all rounds, median of rounds %s\n' \
  "$(ratio "$without" "$floor")" "$(printf '%s\n' "${floor_ratios[@]}" | median)"
printf 'with layer / floor:   %s over all rounds\n' "$(ratio "$floor" "$with")"
