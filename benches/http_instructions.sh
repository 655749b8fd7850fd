#!/usr/bin/env bash
# User-space instructions per request of the axum hello-world served without a check, behind the
# hand-written `floor` and behind the layer, counted by valgrind's callgrind while wrk loads it on
# 127.0.0.1 (2 threads, 64 connections, DURATION seconds after a 2 s warm-up). Unlike requests
# per second, the count hardly moves with the machine's load, so it tells changes of a few
# hundred instructions apart. Valgrind hides SHA-NI, so SHA-256 counts in software (about 3,400
# instructions per request, where the real instruction takes a fraction of that). Not run in CI.
#
#   bash benches/http_instructions.sh      # DURATION=8s by default
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-8s}"

for tool in wrk valgrind; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing $tool from Debian's packages" >&2
    apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null
  fi
done
# A bench target (not an example): `cargo bench` builds it with the bench profile and prints its path.
binary=$(cargo bench --bench hello_load --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Prints the instructions per request of the server started with flag $1.
count() {
  local flag="$1" address key pid requests total
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" "$binary" $flag \
    >"$work/server" 2>"$work/valgrind" &
  pid=$!
  for _ in $(seq 1 100); do [ "$(wc -l <"$work/server")" -ge 2 ] && break; sleep 0.3; done
  address=$(sed -n 1p "$work/server")
  key=$(sed -n 2p "$work/server")
  case "$address" in 127.0.0.1:*) ;; *) echo "unexpected address $address" >&2; kill "$pid"; exit 1 ;; esac
  wrk -t1 -c8 -d2s -H "Authorization: Bearer $key" "http://$address/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  wrk -t2 -c64 -d"$DURATION" -H "Authorization: Bearer $key" "http://$address/" >"$work/wrk"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if grep -q "Non-2xx" "$work/wrk"; then echo "wrk saw non-2xx answers" >&2; exit 1; fi
  requests=$(awk '/requests in/ {print $1}' "$work/wrk")
  # The dump taken between -z and -d; the one written at exit counts the shutdown.
  total=$(grep -h '^totals:' "$work/callgrind.$pid.1" | awk '{print $2}')
  rm -f "$work"/callgrind.*
  awk -v t="$total" -v r="$requests" 'BEGIN {printf "%.0f", t / r}'
}

none=$(count "--plain")
floor=$(count "--floor")
layer=$(count "--layer")
printf 'instructions per request: without %s, floor %s, layer %s\n' "$none" "$floor" "$layer"
printf 'floor - without %s, layer - without %s, layer - floor %s\n' \
  $((floor - none)) $((layer - none)) $((layer - floor))
awk -v l="$layer" -v f="$floor" 'BEGIN {printf "layer / floor %.3f (target <= 1.05)\n", l / f}'
