#!/usr/bin/env bash
# A Docker Swarm test cluster on this one machine, for the Swarm backend's tests and bench.
#
#   scripts/test-cluster.sh start NAME [COUNT] [--runsc-node K]
#   scripts/test-cluster.sh stop NAME
#   scripts/test-cluster.sh status NAME
#   scripts/test-cluster.sh kill-node NAME K    node NAME-K dies: its dockerd is killed
#
# COUNT engines (default 3) from scripts/test-engines.sh, each dockerd in a
# network namespace of its own with the image loaded; NAME-1 becomes the
# manager, the others join as workers. With --runsc-node K, engine NAME-K runs
# gVisor (runsc) as its default runtime and carries the node label
# fiddledock.runtime=runsc. Prints the settings a client needs:
#   DOCKER_HOST=unix:///run/fiddledock-test/NAME-1.sock   (the manager)
#   node engine template unix:///run/fiddledock-test/NAME-by-addr/{addr}.sock
# (each node's engine, named by the address Swarm reports for it). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=/run/fiddledock-test
DATA_DIR=/var/lib/fiddledock-test
SUBNET=10.213.0

die() { echo "test-cluster: ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
engine() { docker -H "unix://$RUN_DIR/$1.sock" "${@:2}"; }

cmd_start() {
  local name=$1 count=3 runsc=0 i token started
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --runsc-node) [ $# -ge 2 ] || usage; runsc=$2; shift 2 ;;
      [0-9]*) count=$1; shift ;;
      *) usage ;;
    esac
  done
  [[ "$count" =~ ^[2-9]$ ]] || die "COUNT must be 2 to 9"
  [[ "$runsc" =~ ^[0-9]$ ]] && [ "$runsc" -le "$count" ] || die "--runsc-node must name one of 1..$count"
  started=$(date +%s%N)
  trap 'bash scripts/test-engines.sh stop "$name" >/dev/null 2>&1' EXIT  # a failed start leaves nothing
  bash scripts/test-engines.sh start "$name" "$count"
  if [ "$runsc" != 0 ]; then
    command -v runsc >/dev/null || die "runsc is not installed (scripts/ensure-engine.sh --with-runsc)"
    # --network=none: gVisor cannot use the host-side network namespace Swarm gives a task,
    # and an instance needs none (the main engine registers runsc the same way).
    printf '{"runtimes": {"runsc": {"path": "%s", "runtimeArgs": ["--network=none"]}}, "default-runtime": "runsc"}\n' \
      "$(command -v runsc)" > "$DATA_DIR/$name-$runsc/daemon.json"
    bash scripts/test-engines.sh restart "$name-$runsc"
  fi
  engine "$name-1" swarm init --advertise-addr "$SUBNET.11" >/dev/null
  token=$(engine "$name-1" swarm join-token -q worker)
  for ((i = 2; i <= count; i++)); do
    engine "$name-$i" swarm join --token "$token" --advertise-addr "$SUBNET.$((10 + i))" \
      "$SUBNET.11:2377" >/dev/null &
  done
  wait
  mkdir -p "$RUN_DIR/$name-by-addr"
  for ((i = 1; i <= count; i++)); do
    ln -sfn "$RUN_DIR/$name-$i.sock" "$RUN_DIR/$name-by-addr/$SUBNET.$((10 + i)).sock"
  done
  if [ "$runsc" != 0 ]; then
    engine "$name-1" node update --label-add fiddledock.runtime=runsc \
      "$(engine "$name-$runsc" info -f '{{.Swarm.NodeID}}')" >/dev/null
  fi
  for ((i = 0; i < 300; i++)); do  # every node Ready
    [ "$(engine "$name-1" node ls -q -f role=worker | wc -l)" = $((count - 1)) ] \
      && ! engine "$name-1" node ls --format '{{.Status}}' | grep -qv Ready && break
    sleep 0.1
  done
  trap - EXIT
  echo "test-cluster: $name: $count nodes ready in $(( ($(date +%s%N) - started) / 1000000 )) ms"
  echo "DOCKER_HOST=unix://$RUN_DIR/$name-1.sock"
  echo "node engine template unix://$RUN_DIR/$name-by-addr/{addr}.sock"
}

cmd_stop() {
  rm -rf "${RUN_DIR:?}/$1-by-addr"
  bash scripts/test-engines.sh stop "$1"
}

cmd_status() {
  bash scripts/test-engines.sh status "$1"
  engine "$1-1" node ls 2>/dev/null || echo "test-cluster: $1-1 is not a manager (or not running)"
}

cmd_kill_node() {  # SIGKILL one node's dockerd: its engine and its streams end at once
  local engine="$1-$2" pid
  pid=$(cat "$RUN_DIR/$engine.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null \
    || die "node $engine is not running"
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$RUN_DIR/$engine.sock"  # what a dead machine's address gives: nothing to connect to
  echo "test-cluster: node $engine killed"
}

case "${1:-}" in
  start)  [ $# -ge 2 ] || usage; shift; cmd_start "$@" ;;
  stop)   [ $# -eq 2 ] || usage; cmd_stop "$2" ;;
  status) [ $# -eq 2 ] || usage; cmd_status "$2" ;;
  kill-node) [ $# -eq 3 ] || usage; cmd_kill_node "$2" "$3" ;;
  *) usage ;;
esac
