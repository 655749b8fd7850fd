#!/usr/bin/env bash
# End-to-end throughput of an axum hello-world with and without ApiKeyLayer, on 127.0.0.1.
# Runs A/B/A/B (ROUNDS pairs), each with wrk: 2 threads, 64 connections, DURATION seconds.
# Prints requests per second of each run and the ratio with/without. Not run in CI.
#
#   bash benches/http_load.sh            # ROUNDS=2 DURATION=10s by default
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10s}"

if ! command -v wrk >/dev/null; then
  echo "installing wrk from Debian's packages" >&2
  apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --example hello_load -q
binary="${CARGO_TARGET_DIR:-target}/release/examples/hello_load"

# Starts the server, runs wrk against it, prints requests/s, stops the server.
run() {
  local flag="$1" output address key rps
  output=$(mktemp)
  "$binary" $flag >"$output" &
  local pid=$!
  for _ in $(seq 1 50); do [ "$(wc -l <"$output")" -ge 1 ] && break; sleep 0.1; done
  sleep 0.2
  address=$(sed -n 1p "$output")
  key=$(sed -n 2p "$output")
  case "$address" in 127.0.0.1:*) ;; *) echo "unexpected address $address" >&2; kill "$pid"; exit 1 ;; esac
  # Both servers get the same request, key included: the one without the layer ignores it, so
  # the ratio measures the layer's work rather than the client sending fewer header bytes.
  [ -n "$key" ] || key="$KEY_FOR_BOTH"
  local report
  report=$(wrk -t2 -c64 -d"$DURATION" -H "Authorization: Bearer $key" "http://$address/")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$output"
  # Every answer must be a 200, or the figure measures refusals.
  if grep -q "Non-2xx" <<<"$report"; then echo "wrk saw non-2xx answers:" >&2; echo "$report" >&2; exit 1; fi
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$report")
  echo "$rps"
}

# For the server without the layer, which never reads it: a key-shaped value of a key's length.
KEY_FOR_BOTH="sk_live_$(printf '%038d' 0)"
without=0; with=0
for round in $(seq 1 "$ROUNDS"); do
  a=$(run ""); b=$(run "--layer")
  printf 'round %d: without %s req/s, with layer %s req/s\n' "$round" "$a" "$b"
  without=$(awk -v s="$without" -v x="$a" 'BEGIN {print s + x}')
  with=$(awk -v s="$with" -v x="$b" 'BEGIN {print s + x}')
done
awk -v a="$without" -v b="$with" 'BEGIN {printf "with / without: %.3f (target >= 0.95)\n", b / a}'
