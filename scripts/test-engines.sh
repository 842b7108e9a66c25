#!/usr/bin/env bash
# Extra Docker engines for tests and benchmarks, each in a network namespace of its own.
#
#   scripts/test-engines.sh start NAME [COUNT]   engines NAME-1 .. NAME-COUNT (default 1)
#   scripts/test-engines.sh stop NAME            remove everything start made (safe twice)
#   scripts/test-engines.sh status NAME          one line per engine
#   scripts/test-engines.sh restart ENGINE       stop one dockerd and start it on the same data
#   scripts/test-engines.sh freeze|thaw ENGINE   SIGSTOP / SIGCONT one dockerd
#   scripts/test-engines.sh purge                remove the image template (see below)
#
# Engine NAME-i listens on unix:///run/fiddledock-test/NAME-i.sock (point
# DOCKER_HOST there) and has the image $FIDDLEDOCK_TEST_IMAGE (default
# fiddledock-sandbox:2) loaded from the main engine: there is no registry.
# Its dockerd runs in network namespace NAME-i, entered with nsenter (not
# `ip netns exec`, which remounts /sys and hides the cgroup mounts): a second
# dockerd in the host's namespace would rewrite the main engine's bridge and
# iptables. The engines of one NAME share a bridge in namespace NAME-hub, at
# 10.213.0.(10+i)/24: private addresses, only inside these namespaces, and no
# rule in the host's iptables. Needs root.
#
# The image's layers are loaded once into a template data root
# ($DATA_DIR/templates/IMAGE-ID, kept between runs: `purge` removes it); each
# engine then starts from hard links to those read-only layers and a copy of
# the rest, in a second or two instead of a save and load each time.
# FIDDLEDOCK_DOCKERD_ARGS: more dockerd options for every engine started (e.g. a TLS listener).
set -euo pipefail

RUN_DIR=/run/fiddledock-test        # sockets, pidfiles, exec roots
DATA_DIR=/var/lib/fiddledock-test   # data roots, logs
IMAGE=${FIDDLEDOCK_TEST_IMAGE:-fiddledock-sandbox:2}
SUBNET=10.213.0
WAIT_SECONDS=30

die() { echo "test-engines: ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

check_name() {
  [[ "$1" =~ ^[a-z][a-z0-9]{0,11}(-[0-9]+)?$ ]] \
    || die "name '$1' must be 1-12 lowercase letters or digits, starting with a letter"
}

engine_pid() {  # the dockerd's pid, if it runs
  local pid
  pid=$(cat "$RUN_DIR/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

engines_of() {  # the engines of NAME that exist, by their data or their namespace
  local name=$1 found
  found=$( (ls -d "$DATA_DIR/$name"-[0-9]* 2>/dev/null | xargs -r -n1 basename
            ip netns list | awk '{print $1}' | grep -E "^$name-[0-9]+$") | sort -u)
  [ -n "$found" ] && echo "$found" || true
}

ensure_template() {  # TEMPLATE: a stopped engine's data root with the image loaded
  local id engine="$1-0" tmp
  id=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null | sed 's/^sha256://' | cut -c1-16) \
    || die "image $IMAGE is not on the main engine"
  [ -n "$id" ] || die "image $IMAGE is not on the main engine"
  TEMPLATE="$DATA_DIR/templates/$id"
  [ -d "$TEMPLATE" ] && return 0
  ip netns add "$engine"
  start_dockerd "$engine"
  docker save "$IMAGE" | docker -H "unix://$RUN_DIR/$engine.sock" load >/dev/null
  stop_dockerd "$engine"
  unmount_under "$RUN_DIR/$engine.exec"
  unmount_under "$DATA_DIR/$engine"
  rm -rf "$DATA_DIR/$engine/data/containerd"
  mkdir -p "$DATA_DIR/templates"
  tmp="$DATA_DIR/templates/.$id.$$"
  mv "$DATA_DIR/$engine/data" "$tmp"
  # Another start may have made it meanwhile; an older image's template is no longer needed.
  mv -T "$tmp" "$TEMPLATE" 2>/dev/null || rm -rf "$tmp"
  find "$DATA_DIR/templates" -mindepth 1 -maxdepth 1 ! -name "$id" ! -name '.*' -exec rm -rf {} +
  remove_engine "$engine"
}

data_from_template() {
  local data="$DATA_DIR/$1/data" part
  mkdir -p "$data"
  for part in "$TEMPLATE"/*; do
    # Image layers are never written (a container writes to a layer of its own): linked.
    if [ "$(basename "$part")" = overlay2 ]; then cp -al "$part" "$data/"; else cp -a "$part" "$data/"; fi
  done
}

start_dockerd() {
  local engine=$1 sock="unix://$RUN_DIR/$1.sock" i
  mkdir -p "$RUN_DIR/$engine.exec" "$DATA_DIR/$engine/data"
  [ -f "$DATA_DIR/$engine/daemon.json" ] || echo '{}' > "$DATA_DIR/$engine/daemon.json"
  # setsid: the engine outlives this script and is not in the caller's process group.
  setsid nsenter --net="/var/run/netns/$engine" dockerd \
    --config-file "$DATA_DIR/$engine/daemon.json" \
    --data-root "$DATA_DIR/$engine/data" --exec-root "$RUN_DIR/$engine.exec" \
    -H "$sock" --pidfile "$RUN_DIR/$engine.pid" \
    --containerd-namespace "fdt-$engine" --containerd-plugins-namespace "fdt-$engine-plugins" \
    ${FIDDLEDOCK_DOCKERD_ARGS:-} >>"$DATA_DIR/$engine/dockerd.log" 2>&1 < /dev/null &
  for ((i = 0; i < WAIT_SECONDS * 10; i++)); do
    timeout 5 docker -H "$sock" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -5 "$DATA_DIR/$engine/dockerd.log" >&2
  die "engine $engine did not answer within $WAIT_SECONDS s (log: $DATA_DIR/$engine/dockerd.log)"
}

stop_dockerd() {  # clean stop: its containers stop with it
  local engine=$1 pid i
  pid=$(engine_pid "$engine") || return 0
  kill -CONT "$pid" 2>/dev/null || true  # a frozen engine cannot stop
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

unmount_under() {  # every mount below a directory, deepest first
  awk -v d="$1/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r \
    | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

cmd_start() {
  local name=$1 count=${2:-1} hub="$1-hub" i engine started jobs=()
  check_name "$name"
  [[ "$count" =~ ^[1-9][0-9]?$ ]] || die "COUNT must be 1 to 99"
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, dockerd)"
  command -v dockerd >/dev/null || die "dockerd is not installed (scripts/ensure-engine.sh installs it)"
  [ -z "$(engines_of "$name")" ] || die "engines $name-* exist already; stop them first"
  started=$(date +%s%N)
  trap 'cmd_stop "$name" >/dev/null 2>&1' EXIT  # a failed start leaves nothing behind
  mkdir -p "$RUN_DIR" "$DATA_DIR"
  ip netns add "$hub"
  ip -n "$hub" link set lo up
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  ensure_template "$name"
  for ((i = 1; i <= count; i++)); do
    engine="$name-$i"
    data_from_template "$engine"
    ip netns add "$engine"
    ip -n "$engine" link set lo up
    ip -n "$engine" link add eth0 type veth peer name "e$i" netns "$hub"
    ip -n "$hub" link set "e$i" master br0 up
    ip -n "$engine" addr add "$SUBNET.$((10 + i))/24" dev eth0
    ip -n "$engine" link set eth0 up
    start_dockerd "$engine" & jobs+=($!)
  done
  wait_all "engine start" "${jobs[@]}"
  trap - EXIT
  echo "test-engines: $count engine(s) $name-1..$count ready in" \
    "$(( ($(date +%s%N) - started) / 1000000 )) ms"
}

wait_all() {  # wait for the background jobs given; fail if one did
  local what=$1 failed=0 pid
  shift
  for pid in "$@"; do wait "$pid" || failed=1; done
  [ "$failed" = 0 ] || die "$what failed"
}

cmd_stop() {
  local name=$1 engine pid
  check_name "$name"
  for engine in $(engines_of "$name"); do
    stop_dockerd "$engine" &
  done
  wait
  for engine in $(engines_of "$name") "$name-0"; do
    remove_engine "$engine"
  done
  ip netns delete "$name-hub" 2>/dev/null || true
  echo "test-engines: $name stopped"
}

remove_engine() {  # after its dockerd stopped: whatever is left of it
  local engine=$1 pid
  # What still runs in the namespace (its containerd and shims, after a KILL).
  for pid in $(ip netns pids "$engine" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  unmount_under "$RUN_DIR/$engine.exec"
  unmount_under "$DATA_DIR/$engine"
  rm -rf "$RUN_DIR/$engine.exec" "$RUN_DIR/$engine.sock" "$RUN_DIR/$engine.pid" "$DATA_DIR/$engine"
  ip netns delete "$engine" 2>/dev/null || true
}

cmd_status() {
  local name=$1 engine pid state
  check_name "$name"
  for engine in $(engines_of "$name"); do
    if pid=$(engine_pid "$engine"); then
      state=$(awk '{print $3}' "/proc/$pid/stat")
      [ "$state" = T ] && state=frozen || state=running
      echo "$engine $state pid=$pid unix://$RUN_DIR/$engine.sock"
    else
      echo "$engine stopped unix://$RUN_DIR/$engine.sock"
    fi
  done
}

cmd_restart() {
  check_name "$1"
  [ -d "$DATA_DIR/$1" ] || die "no engine $1"
  stop_dockerd "$1"
  start_dockerd "$1"
}

signal_engine() {
  local pid
  check_name "$2"
  pid=$(engine_pid "$2") || die "engine $2 is not running"
  kill "-$1" "$pid"
}

case "${1:-}" in
  start)   [ $# -ge 2 ] || usage; cmd_start "$2" "${3:-1}" ;;
  stop)    [ $# -eq 2 ] || usage; cmd_stop "$2" ;;
  status)  [ $# -eq 2 ] || usage; cmd_status "$2" ;;
  restart) [ $# -eq 2 ] || usage; cmd_restart "$2" ;;
  purge)   [ $# -eq 1 ] || usage; rm -rf "$DATA_DIR/templates"; echo "test-engines: templates removed" ;;
  freeze)  [ $# -eq 2 ] || usage; signal_engine STOP "$2" ;;
  thaw)    [ $# -eq 2 ] || usage; signal_engine CONT "$2" ;;
  *) usage ;;
esac
