#!/usr/bin/env bash
# A throwaway three-master Redis Cluster on 127.0.0.1, for the `redis` feature's cluster tests.
#
#   bash .ci/redis-cluster.sh start   # starts it and prints the REDIS_CLUSTER_URLS line to export
#   bash .ci/redis-cluster.sh urls    # prints the value of REDIS_CLUSTER_URLS
#   bash .ci/redis-cluster.sh stop    # stops the nodes that `start` started, and forgets them
#
# REDIS_CLUSTER_PORTS (default "7001 7002 7003") picks the ports; each node also uses its port
# plus 10000 for the cluster bus. The nodes keep nothing on disk but their cluster config and
# log, in REDIS_CLUSTER_DIR (default a folder under /tmp), which `stop` removes.
set -euo pipefail

read -r -a ports <<<"${REDIS_CLUSTER_PORTS:-7001 7002 7003}"
dir="${REDIS_CLUSTER_DIR:-${TMPDIR:-/tmp}/tower-api-key-redis-cluster}"

urls() {
  local port list=()
  for port in "${ports[@]}"; do list+=("redis://127.0.0.1:$port"); done
  (IFS=,; echo "${list[*]}")
}

answers() {
  redis-cli -h 127.0.0.1 -p "$1" ping >/dev/null 2>&1
}

fail() {
  echo "$1; see $dir" >&2
  stop_nodes
  exit 1
}

start() {
  local port nodes=()
  for port in "${ports[@]}"; do
    if answers "$port"; then
      echo "port $port already answers: stop what runs there, or set REDIS_CLUSTER_PORTS" >&2
      exit 1
    fi
  done
  mkdir -p "$dir"
  for port in "${ports[@]}"; do
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
      --cluster-config-file "$dir/nodes-$port.conf" --dir "$dir" --save '' --appendonly no \
      --daemonize yes --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log"
    nodes+=("127.0.0.1:$port")
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 50); do answers "$port" && break; sleep 0.1; done
    answers "$port" || fail "the node on port $port did not start"
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
    >"$dir/create.log" 2>&1 || fail "redis-cli --cluster create failed"
  for port in "${ports[@]}"; do
    for _ in $(seq 1 100); do
      redis-cli -h 127.0.0.1 -p "$port" cluster info | grep -q '^cluster_state:ok' && continue 2
      sleep 0.1
    done
    fail "the node on port $port did not reach cluster_state:ok"
  done
  echo "export REDIS_CLUSTER_URLS=$(urls)"
}

# Shuts down only the nodes this script started: those with a pid file in its folder.
stop_nodes() {
  local port
  for port in "${ports[@]}"; do
    if [ -f "$dir/redis-$port.pid" ]; then
      redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
    fi
  done
}

stop() {
  stop_nodes
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  urls) urls ;;
  *) echo "usage: $0 start|stop|urls" >&2; exit 2 ;;
esac
