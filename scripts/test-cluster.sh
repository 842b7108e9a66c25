#!/usr/bin/env bash
# A Docker Swarm test cluster on this one machine, for the Swarm backend's tests and bench.
#
#   scripts/test-cluster.sh start NAME [COUNT] [--runsc-node K] [--registry] [--tls DIR]
#   scripts/test-cluster.sh stop NAME
#   scripts/test-cluster.sh status NAME
#   scripts/test-cluster.sh kill-node NAME K    node NAME-K dies: its dockerd is killed
#
# COUNT engines (default 3) from scripts/test-engines.sh, each dockerd in a
# network namespace of its own with the image loaded; NAME-1 becomes the
# manager, the others join as workers. With --runsc-node K, engine NAME-K runs
# gVisor (runsc) as its default runtime and carries the node label
# fiddledock.runtime=runsc. With --registry, a registry (Debian's docker-registry,
# installed if missing) listens at 10.213.0.2:5000 on the cluster's bridge, in
# namespace NAME-hub; every node trusts it without TLS (insecure-registries) and
# it holds the test image as 10.213.0.2:5000/IMAGE (pushed once per image id and
# kept in $DATA_DIR/registry, as the engines' template). With --tls DIR, each node's
# engine also listens on tcp://ADDR:2376 with TLS, clients verified (DIR holds ca.pem,
# server-cert.pem, server-key.pem; ADDR is only reachable inside the namespaces).
# Prints the settings a client needs:
#   DOCKER_HOST=unix:///run/fiddledock-test/NAME-1.sock   (the manager)
#   node engine template unix:///run/fiddledock-test/NAME-by-addr/{addr}.sock
# (each node's engine, named by the address Swarm reports for it). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR=/run/fiddledock-test
DATA_DIR=/var/lib/fiddledock-test
SUBNET=10.213.0
IMAGE=${FIDDLEDOCK_TEST_IMAGE:-fiddledock-sandbox:2}
REGISTRY=$SUBNET.2:5000

die() { echo "test-cluster: ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
engine() { docker -H "unix://$RUN_DIR/$1.sock" "${@:2}"; }

cmd_start() {
  local name=$1 count=3 runsc=0 registry=0 i token started joins=()
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --runsc-node) [ $# -ge 2 ] || usage; runsc=$2; shift 2 ;;
      --registry) registry=1; shift ;;
      --tls) [ $# -ge 2 ] && [ -f "$2/ca.pem" ] || die "--tls needs a folder with ca.pem, server-cert.pem, server-key.pem"
        export FIDDLEDOCK_DOCKERD_ARGS="-H tcp://0.0.0.0:2376 --tlsverify --tlscacert $2/ca.pem --tlscert $2/server-cert.pem --tlskey $2/server-key.pem"
        shift 2 ;;
      [0-9]*) count=$1; shift ;;
      *) usage ;;
    esac
  done
  [[ "$count" =~ ^[2-9]$ ]] || die "COUNT must be 2 to 9"
  [[ "$runsc" =~ ^[0-9]$ ]] && [ "$runsc" -le "$count" ] || die "--runsc-node must name one of 1..$count"
  started=$(date +%s%N)
  [ "$runsc" = 0 ] || command -v runsc >/dev/null \
    || die "runsc is not installed (scripts/ensure-engine.sh --with-runsc)"
  [ "$registry" = 0 ] || ensure_registry_installed
  trap 'cmd_stop "$name" >/dev/null 2>&1' EXIT  # a failed start leaves nothing
  bash scripts/test-engines.sh start "$name" "$count"
  for ((i = 1; i <= count; i++)); do
    node_config "$([ "$i" = "$runsc" ] && echo 1 || echo 0)" "$registry" \
      > "$DATA_DIR/$name-$i/daemon.json"
    if [ "$i" = "$runsc" ]; then
      bash scripts/test-engines.sh restart "$name-$i"  # a new default runtime needs a restart
    elif [ "$registry" = 1 ]; then
      kill -HUP "$(cat "$RUN_DIR/$name-$i.pid")"  # insecure-registries is reloaded live
    fi
  done
  [ "$registry" = 0 ] || start_registry "$name"
  engine "$name-1" swarm init --advertise-addr "$SUBNET.11" >/dev/null
  token=$(engine "$name-1" swarm join-token -q worker)
  for ((i = 2; i <= count; i++)); do
    engine "$name-$i" swarm join --token "$token" --advertise-addr "$SUBNET.$((10 + i))" \
      "$SUBNET.11:2377" >/dev/null & joins+=($!)
  done
  for i in "${joins[@]}"; do wait "$i" || die "a node could not join the swarm"; done
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
  [ "$registry" = 0 ] || seed_registry "$name"
  trap - EXIT
  echo "test-cluster: $name: $count nodes ready in $(( ($(date +%s%N) - started) / 1000000 )) ms"
  echo "DOCKER_HOST=unix://$RUN_DIR/$name-1.sock"
  echo "node engine template unix://$RUN_DIR/$name-by-addr/{addr}.sock"
  [ "$registry" = 0 ] || echo "registry $REGISTRY holds $REGISTRY/$IMAGE"
}

node_config() {  # daemon.json of a node: RUNSC (0/1) as default runtime, REGISTRY (0/1) trusted
  local parts=()
  # --network=none: gVisor cannot use the host-side network namespace Swarm gives a task,
  # and an instance needs none (the main engine registers runsc the same way).
  [ "$1" = 0 ] || parts+=("$(printf '"runtimes": {"runsc": {"path": "%s", "runtimeArgs": ["--network=none"]}}, "default-runtime": "runsc"' "$(command -v runsc)")")
  [ "$2" = 0 ] || parts+=("\"insecure-registries\": [\"$REGISTRY\"]")
  local IFS=,
  echo "{${parts[*]}}"
}

ensure_registry_installed() {
  command -v docker-registry >/dev/null && return 0
  echo "test-cluster: installing docker-registry (Debian's distribution v2 registry)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends docker-registry >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends docker-registry >/dev/null; } \
    || die "could not install docker-registry with apt-get"
}

registry_store() {  # where the registry keeps the test image: one folder per image id
  local id
  id=$(docker image inspect -f '{{.Id}}' "$IMAGE" | sed 's/^sha256://' | cut -c1-16)
  echo "$DATA_DIR/registry/$id"
}

start_registry() {  # docker-registry in the hub namespace, at $REGISTRY
  local name=$1 store conf i
  store=$(registry_store)
  conf="$RUN_DIR/$name-registry.yml"
  mkdir -p "$store"
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n  secret: %s\n' \
    "$store" "$REGISTRY" "$name" > "$conf"
  ip -n "$name-hub" addr add "$SUBNET.2/24" dev br0
  setsid nsenter --net="/var/run/netns/$name-hub" docker-registry serve "$conf" \
    >>"$DATA_DIR/$name-registry.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/$name-registry.pid"
  for ((i = 0; i < 100; i++)); do
    nsenter --net="/var/run/netns/$name-1" bash -c "exec 3<>/dev/tcp/${REGISTRY/://}" 2>/dev/null \
      && return 0
    sleep 0.1
  done
  die "the registry did not start (log: $DATA_DIR/$name-registry.log)"
}

seed_registry() {  # the test image into the registry, once per image id (from node 1)
  local name=$1 store
  store=$(registry_store)
  [ -f "$store/.pushed" ] && return 0
  exec 9>"$DATA_DIR/registry/.lock"
  flock 9
  if [ ! -f "$store/.pushed" ]; then
    echo "test-cluster: pushing $IMAGE to the registry (once per image, about a minute)" >&2
    engine "$name-1" tag "$IMAGE" "$REGISTRY/$IMAGE"
    engine "$name-1" push "$REGISTRY/$IMAGE" >/dev/null || die "pushing $IMAGE to the registry failed"
    engine "$name-1" rmi "$REGISTRY/$IMAGE" >/dev/null
    touch "$store/.pushed"
  fi
  exec 9>&-
}

cmd_stop() {
  local pid
  if pid=$(cat "$RUN_DIR/$1-registry.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  fi
  rm -f "$RUN_DIR/$1-registry.pid" "$RUN_DIR/$1-registry.yml" "$DATA_DIR/$1-registry.log"
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
