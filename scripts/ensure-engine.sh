#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info` (idempotent).
#
#   scripts/ensure-engine.sh [--with-runsc]
#
# Reachable engine (DOCKER_HOST honoured) -> use it. Otherwise, on Linux as
# root: install Debian's docker.io if dockerd is missing, start dockerd
# detached and wait for it. --with-runsc also installs gVisor's runsc and
# registers it with a local engine (a warning, never a failure, if it cannot).
set -euo pipefail

DOCKERD_LOG=/var/log/fiddledock-dockerd.log
APT_LOG=/var/log/fiddledock-apt.log
DAEMON_JSON=/etc/docker/daemon.json
RUNSC=/usr/bin/runsc
# gVisor's flags (docs/GVISOR.md says why these): runsc cannot use the host-side
# network namespace Docker gives it, and an instance needs no network.
RUNSC_ARGS='["--network=none"]'
WAIT_SECONDS=60

with_runsc=0
for arg in "$@"; do
  case "$arg" in
    --with-runsc) with_runsc=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "ensure-engine: unknown argument: $arg (usage: $0 [--with-runsc])" >&2; exit 2 ;;
  esac
done

say()  { echo "ensure-engine: $*"; }
warn() { echo "ensure-engine: WARNING: $*" >&2; }
die()  { echo "ensure-engine: ERROR: $*" >&2; exit 1; }

# `timeout` guards against a wedged engine that accepts the socket but never answers.
if command -v timeout >/dev/null 2>&1; then with_timeout() { timeout 20 "$@"; }; else with_timeout() { "$@"; }; fi
engine_up() { command -v docker >/dev/null 2>&1 && with_timeout docker info >/dev/null 2>&1; }

# Only an engine on this machine's default socket is one we can start or
# reconfigure; a DOCKER_HOST elsewhere is somebody else's engine.
local_engine() {
  case "${DOCKER_HOST:-}" in
    ""|unix:///var/run/docker.sock|unix:///run/docker.sock) return 0 ;;
    *) return 1 ;;
  esac
}

can_manage() { [ "$(uname -s)" = Linux ] && [ "$(id -u)" = 0 ] && local_engine; }

apt_install() {  # apt_install PKG... ; apt-get update only when a package has no candidate
  local pkg need_update=0
  command -v apt-get >/dev/null 2>&1 || { echo "apt-get not found" >>"$APT_LOG"; return 1; }
  for pkg in "$@"; do
    apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]' || need_update=1
  done
  if [ "$need_update" = 1 ]; then
    say "apt-get update (log: $APT_LOG)"
    apt-get update >>"$APT_LOG" 2>&1 || return 1
  fi
  say "apt-get install $* (log: $APT_LOG)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >>"$APT_LOG" 2>&1
}

dockerd_pid() {  # pid of the running dockerd, from its pidfile, else empty
  local pid
  for f in /var/run/docker.pid /run/docker.pid; do
    if [ -r "$f" ]; then
      pid=$(cat "$f" 2>/dev/null || true)
      if [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
        echo "$pid"; return 0
      fi
    fi
  done
  return 0
}

wait_for_engine() {
  local i
  for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
    engine_up && return 0
    sleep 0.5
  done
  return 1
}

start_dockerd() {
  if ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io || { tail -n 20 "$APT_LOG" >&2 || true; die "could not install docker.io (see $APT_LOG)"; }
  fi
  command -v dockerd >/dev/null 2>&1 || die "docker.io is installed but dockerd is not on PATH"
  if [ -n "$(dockerd_pid)" ]; then
    say "dockerd (pid $(dockerd_pid)) is running but not answering yet; waiting"
  else
    say "starting dockerd (log: $DOCKERD_LOG)"
    # Detached from this shell and its session, so it outlives the caller (CI steps, a notebook).
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  if ! wait_for_engine; then
    tail -n 25 "$DOCKERD_LOG" >&2 || true
    die "dockerd did not answer within ${WAIT_SECONDS}s (see $DOCKERD_LOG)"
  fi
}

has_runsc_runtime() {
  docker info --format '{{range $name, $rt := .Runtimes}}{{$name}} {{end}}' 2>/dev/null | tr ' ' '\n' | grep -qx runsc
}

configure_runsc() {  # install runsc and register it in daemon.json; 0 if it is registered
  if [ ! -x "$RUNSC" ]; then
    apt_install runsc || { warn "could not install runsc (see $APT_LOG); gVisor will not be available"; return 1; }
    [ -x "$RUNSC" ] || { warn "runsc installed but $RUNSC is missing"; return 1; }
  fi
  mkdir -p "$(dirname "$DAEMON_JSON")"
  # Merge into whatever daemon.json already says; write only on change.
  python3 - "$DAEMON_JSON" "$RUNSC" "$RUNSC_ARGS" <<'PY' || { warn "could not update $DAEMON_JSON"; return 1; }
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path):
    with open(path) as fh:
        text = fh.read()
    if text.strip():
        try:
            config = json.loads(text)
        except ValueError as exc:
            sys.exit(f"{path} is not valid JSON ({exc}); leaving it alone")
if not isinstance(config, dict):
    sys.exit(f"{path} is not a JSON object; leaving it alone")
wanted = {"path": runsc, "runtimeArgs": json.loads(sys.argv[3])}
runtimes = config.setdefault("runtimes", {})
if runtimes.get("runsc") != wanted:
    runtimes["runsc"] = wanted
    tmp = path + ".fiddledock.tmp"
    with open(tmp, "w") as fh:
        json.dump(config, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
    print(f"ensure-engine: registered runsc in {path} with {' '.join(wanted['runtimeArgs'])}")
PY
}

runsc_args_current() {  # does the running engine use RUNSC_ARGS for runsc? (docker info lists them)
  [ "$(docker info --format '{{with index .Runtimes "runsc"}}{{json .Args}}{{end}}' 2>/dev/null | tr -d ' ')" \
    = "$(echo "$RUNSC_ARGS" | tr -d ' ')" ]
}

# --- main ---------------------------------------------------------------------

runsc_ready=0
if [ "$with_runsc" = 1 ]; then
  if can_manage; then
    configure_runsc && runsc_ready=1
  elif ! local_engine; then
    warn "--with-runsc: DOCKER_HOST=$DOCKER_HOST is not this machine's engine; register runsc there yourself"
  else
    warn "--with-runsc needs root on Linux; skipping gVisor (install runsc and add it to $DAEMON_JSON)"
  fi
fi

if engine_up; then
  say "Docker engine reachable (server $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
  # Also when runsc is there with older flags (a machine set up before they changed).
  if [ "$runsc_ready" = 1 ] && ! { has_runsc_runtime && runsc_args_current; }; then
    pid=$(dockerd_pid)
    if [ -n "$pid" ]; then
      say "reloading dockerd (pid $pid) to pick up runsc $RUNSC_ARGS"
      kill -HUP "$pid"
    else
      warn "runsc is configured but the running engine's dockerd pid is unknown; restart the engine to load it"
    fi
  fi
elif ! command -v docker >/dev/null 2>&1 && ! can_manage; then
  die "no docker client and no engine. Install Docker Engine (Linux: as root run this script, or 'apt-get install docker.io'; macOS/Windows: Docker Desktop), or set DOCKER_HOST to a reachable engine"
elif ! local_engine; then
  die "DOCKER_HOST=$DOCKER_HOST does not answer 'docker info'. Start that engine or unset DOCKER_HOST to use a local one"
elif [ -S /var/run/docker.sock ] && [ ! -w /var/run/docker.sock ] && [ "$(id -u)" != 0 ]; then
  die "an engine socket exists (/var/run/docker.sock) but $(id -un) may not use it. Add the user to the 'docker' group (then log in again), run as root, or set DOCKER_HOST to a reachable engine"
elif [ "$(uname -s)" != Linux ]; then
  die "no Docker engine answers. Start Docker Desktop (or another engine), or set DOCKER_HOST to a reachable engine"
elif [ "$(id -u)" != 0 ]; then
  die "no Docker engine answers and starting one needs root. Run this script as root (it installs docker.io and starts dockerd), start the engine yourself, or set DOCKER_HOST to a reachable engine"
else
  start_dockerd
  say "Docker engine started (server $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
fi

if [ "$runsc_ready" = 1 ]; then
  for ((i = 0; i < 20; i++)); do
    has_runsc_runtime && runsc_args_current && break
    sleep 0.5
  done
  if has_runsc_runtime && ! runsc_args_current; then
    warn "the engine runs runsc with other flags than $RUNSC_ARGS (see $DAEMON_JSON); restart it to apply them"
  elif has_runsc_runtime; then
    say "gVisor runtime 'runsc' available"
  else
    warn "runsc is in $DAEMON_JSON but the engine does not list it (see $DOCKERD_LOG); --runtime runsc will not work"
  fi
fi
exit 0
