"""The Docker engine behind the backend interface (``_backend.Backend``).

Every call FiddleDock makes to Docker goes through ``DockerBackend.call``,
with a short explicit timeout, and every failure to reach or hear the engine
becomes one ``EngineUnavailable`` there. Docker's JSON is turned into the
interface's records here and nowhere else. ``DOCKER_HOST`` and the other
``DOCKER_*`` variables are honoured through ``docker.from_env``.
"""

import datetime
import os
import socket
import threading
import time
import urllib.parse

import docker
from docker.constants import MINIMUM_DOCKER_API_VERSION
import docker.errors
import requests.exceptions
import urllib3.exceptions

from ._backend import LABEL, PING_TIMEOUT, Backend, Container, Usage
from ._docker_fanout import get_many
from ._docker_images import DockerImages
from ._errors import EngineError, EngineUnavailable, FiddleDockError, ImageNotFound, short_error
from ._spec import shown

# How long each kind of call may wait for the engine, in seconds. A live engine
# answers the quick ones in milliseconds; a frozen one (SIGSTOP, overload)
# accepts the connection and never answers, and docker-py would wait 60 s.
QUICK_TIMEOUT = 5.0    # inspect, list, info, rename, exec inspect
CHANGE_TIMEOUT = 30.0  # create, start, kill, remove, exec create: seconds on a loaded machine
STATS_TIMEOUT = 15.0   # one stats sample waits for two readings, about a second apart
# A one-shot sample (one reading) gets its CPU figure from this kernel's previous
# reading of the container, if at most this many seconds old; else from two readings.
CPU_WINDOW = 60.0
CONNECT_TIMEOUT = 5.0  # opening a raw socket to the engine
UPGRADE_TIMEOUT = 30   # seconds for the engine to answer an attach or exec request
MAX_CONNECTIONS = 32  # HTTP connections kept per engine client

# Every way a wait for the engine can run out (requests, urllib3, raw sockets).
TIMEOUTS = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)
_NO_LIMIT = object()  # a call's timeout when DockerBackend.call did not choose one


def engine_address():
    return os.environ.get("DOCKER_HOST") or "the default socket"


def silent_engine_text(seconds, where=None):
    """The message for an engine that accepts requests but does not answer them."""
    return ("the Docker engine at %s did not answer within %g s (stopped, frozen or "
            "overloaded?); try again when it answers" % (where or engine_address(), seconds))


def _engine_error(exc, within=None, where=None):
    where = where or engine_address()
    timed_out = isinstance(exc, TIMEOUTS) or "timed out" in str(exc).lower()
    if timed_out:
        return EngineUnavailable(silent_engine_text(within or CONNECT_TIMEOUT, where))
    if "permission denied" in str(exc).lower():
        return EngineUnavailable(
            "no permission to use the Docker engine at %s (%s). Add your user to the "
            "'docker' group (then log in again), or run as a user who may." % (where, short_error(exc)))
    return EngineUnavailable(
        "cannot reach the Docker engine at %s (%s). Start it (scripts/ensure-engine.sh "
        "does, on Linux as root) or point DOCKER_HOST at one." % (where, short_error(exc)))


class _CallTimeout(threading.local):
    seconds = _NO_LIMIT


def _call_timeout(api):
    """Where DockerBackend.call puts the timeout it chose for this thread's requests on api.

    Installed once per docker-py client. A request that names its own timeout
    (image build, pull, import: none) keeps it.
    """
    current = getattr(api, "_fiddledock_call_timeout", None)
    if current is None:
        current = api._fiddledock_call_timeout = _CallTimeout()
        default = api._set_request_timeout

        def set_request_timeout(kwargs):
            if current.seconds is not _NO_LIMIT:
                kwargs.setdefault("timeout", current.seconds)
            return default(kwargs)
        api._set_request_timeout = set_request_timeout
    return current


# --- Docker's JSON as the interface's records ------------------------------------

def parse_time(text):
    """Docker's UTC timestamps ('2024-05-01T12:00:00.123456789Z'); None for the zero time."""
    if not text or text.startswith("0001-"):
        return None
    when = datetime.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    return when.replace(tzinfo=datetime.timezone.utc)


def container_of_summary(row):
    """A ``Container`` from one entry of the container list."""
    return Container(id=row["Id"], name=((row.get("Names") or [""])[0]).lstrip("/"),
                     labels=row.get("Labels") or {}, state=row.get("State") or "",
                     image=row.get("Image") or "")


def container_of_inspect(info):
    """A ``Container`` from a container's inspect data."""
    state = info.get("State") or {}
    config = info.get("Config") or {}
    return Container(
        id=info["Id"], name=(info.get("Name") or "").lstrip("/"),
        labels=config.get("Labels") or {}, state=state.get("Status") or "",
        image=config.get("Image") or "", exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")), started_at=parse_time(state.get("StartedAt")),
        memory_limit=(info.get("HostConfig") or {}).get("Memory") or None,
        user=config.get("User") or "", env=list(config.get("Env") or []))


def memory_used(stats):
    """Bytes in use from a stats sample, page cache that can be dropped left out."""
    mem = (stats or {}).get("memory_stats") or {}
    usage = mem.get("usage")
    if usage is None:
        return None
    detail = mem.get("stats") or {}
    # cgroup v1 names it total_inactive_file, v2 inactive_file (as `docker stats` does)
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return max(0, int(usage) - int(inactive or 0))


def cpu_reading(cpu):
    """``(container's CPU ns, host's CPU ns, cores)`` of a sample's ``cpu_stats``
    (or ``precpu_stats``); None when it has none (a one-shot sample's precpu)."""
    try:
        cores = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or []) or 1
        return int(cpu["cpu_usage"]["total_usage"]), int(cpu["system_cpu_usage"]), cores
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def cpu_between(before, after):
    """CPU use between two readings (``cpu_reading``), 100 = one core (like `docker stats`)."""
    if before is None or after is None:
        return None
    cpu_delta, system_delta = after[0] - before[0], after[1] - before[1]
    if system_delta <= 0 or cpu_delta < 0:  # the same reading, or a restarted container
        return None
    return cpu_delta / system_delta * after[2] * 100.0


def cpu_percent(stats):
    """CPU use over the sample's own interval (its precpu), 100 = one core."""
    stats = stats or {}
    return cpu_between(cpu_reading(stats.get("precpu_stats")), cpu_reading(stats.get("cpu_stats")))


def _explanation(answer):
    """The engine's reason in an error answer ({"message": ...})."""
    message = answer.get("message") if isinstance(answer, dict) else None
    return str(message or "the engine gave no reason")[:300]


class DockerBackend(Backend):
    """A Docker engine, reached lazily on first use.

    ``client``: a docker-py client to use instead of one from the environment;
    ``address``: how messages name that engine (default: DOCKER_HOST).
    """

    def __init__(self, client=None, address=None):
        self._client = client
        self._from_env = client is None
        self.address = address
        self._info = None
        self._readings = {}  # container id -> (monotonic time, cpu_reading) of its last sample

    def clone(self):
        return DockerBackend() if self._from_env else DockerBackend(self._client, self.address)

    def _docker(self):
        """The docker-py client (made on first use); for this module only."""
        if self._client is None:
            try:
                # Room for calls made side by side (a cell on many instances,
                # a backend's default inspect_many). The timeout covers the
                # version check made while connecting.
                tls = bool(docker.utils.kwargs_from_env().get("tls"))
                client = docker.from_env(max_pool_size=MAX_CONNECTIONS, timeout=QUICK_TIMEOUT,
                                         version=MINIMUM_DOCKER_API_VERSION if tls else None)
                if tls:
                    # requests lets REQUESTS_CA_BUNDLE (often set machine-wide)
                    # override DOCKER_CERT_PATH's CA, so the engine would be checked
                    # against the wrong one; turned off before the version check.
                    client.api.trust_env = False
                    client.api._version = client.api._retrieve_server_version()
            except docker.errors.DockerException as exc:
                raise _engine_error(exc, QUICK_TIMEOUT) from None
            client.api.timeout = CHANGE_TIMEOUT  # for calls that choose none
            self._client = client
        return self._client

    @property
    def _api(self):
        return self._docker().api

    @property
    def api(self):
        """docker-py's low-level client, for calls made through ``call`` elsewhere
        (the Swarm backend's service calls)."""
        return self._docker().api

    def call(self, fn, *args, within=QUICK_TIMEOUT, **kwargs):
        """Run an API call that may wait ``within`` s for the engine (None: no limit).

        Connection failures and timeouts become EngineUnavailable, refusals
        EngineError (with the status code), so no docker-py traceback reaches a cell.
        """
        current = _call_timeout(self._api)
        saved = current.seconds
        current.seconds = within
        try:
            return fn(*args, **kwargs)
        except TIMEOUTS as exc:
            raise _engine_error(exc, within, self.address) from None
        except (requests.exceptions.ConnectionError, ConnectionError) as exc:
            raise _engine_error(exc, within, self.address) from None
        except docker.errors.APIError as exc:
            raise EngineError(exc.status_code, exc.explanation or str(exc)) from None
        except docker.errors.DockerException as exc:
            raise _engine_error(exc, within, self.address) from None
        finally:
            current.seconds = saved

    def ping(self, within=PING_TIMEOUT):
        self.call(self._api.ping, within=within)

    def info(self):
        """The engine's `docker info` (asked once: runtimes and capacity do not change)."""
        if self._info is None:
            self._info = self.call(self._api.info)
        return self._info

    def runtimes(self):
        return sorted((self.info().get("Runtimes") or {}).keys()) or ["runc"]

    def capacity(self):
        info = self.info()
        return info.get("NCPU") or None, info.get("MemTotal") or None

    # --- images -------------------------------------------------------------
    def image_exists(self, image):
        try:
            self.call(self._api.inspect_image, image)
            return True
        except EngineError as exc:
            if exc.status_code == 404:
                return False
            if exc.status_code == 400:
                why = exc.explanation.rsplit(": ", 1)[-1]  # the reason, not the name again
                raise ImageNotFound(image, "%s is not a valid image name (%s)"
                                    % (shown(image), why[:200])) from None
            raise

    @property
    def images(self):
        """Image I/O for building the default image (look up, pull, build, import)."""
        return DockerImages(self._api)

    # --- containers -----------------------------------------------------------
    def inspect(self, name_or_id):
        try:
            return container_of_inspect(self.call(self._api.inspect_container, name_or_id))
        except EngineError as exc:
            if exc.status_code == 404:
                return None
            raise

    def list(self, labels=None):
        filters = ["%s=1" % LABEL]
        for key, value in (labels or {}).items():
            filters.append("%s=%s" % (key, value))
        rows = self.call(self._api.containers, all=True, filters={"label": filters})
        return [container_of_summary(row) for row in rows]

    def create(self, name, spec, command, labels, hostname):
        config, host_config = spec.container_config(command, labels, hostname=hostname)
        return self.create_container(name, config, host_config)

    def create_container(self, name, config, host_config):
        """Create a container from Docker's own ``config`` and ``host_config`` dicts; its id."""
        hc = self._api.create_host_config(**host_config)
        try:
            created = self.call(self._api.create_container, name=name,
                                host_config=hc, within=CHANGE_TIMEOUT, **config)
        except EngineError as exc:
            if exc.status_code == 404 and "image" in exc.explanation.lower():
                raise ImageNotFound(config.get("image")) from None
            raise EngineError(exc.status_code, "the engine refused to create %s: %s"
                              % (name, exc.explanation)) from None
        return created["Id"]

    def start(self, container_id):
        try:
            self.call(self._api.start, container_id, within=CHANGE_TIMEOUT)
        except EngineError as exc:
            raise EngineError(exc.status_code, "the engine could not start the container: %s"
                              % exc.explanation) from None

    def kill(self, container_id):
        try:
            self.call(self._api.kill, container_id, within=CHANGE_TIMEOUT)
        except EngineError as exc:
            if exc.status_code not in (404, 409):  # gone, or not running
                raise

    def remove(self, container_id):
        try:
            self.call(self._api.remove_container, container_id, force=True, v=True,
                      within=CHANGE_TIMEOUT)
        except EngineError as exc:
            if exc.status_code not in (404, 409):  # gone, or removal already in progress
                raise

    def rename(self, container_id, name):
        self.call(self._api.rename, container_id, name)

    def stats(self, container_id):
        sample = self.call(self._api.stats, container_id, stream=False, within=STATS_TIMEOUT)
        return Usage(memory_used(sample), cpu_percent(sample))

    # --- many containers at once (see _docker_fanout) ---------------------------
    def _get_many(self, paths, within):
        """``{path: (status, JSON)}``, or None when the transport is not a raw socket."""
        if self._raw_socket_kind() is None:
            return None
        prefix = "/v%s" % self._api._version
        answers = get_many(self._raw_socket, [prefix + p for p in paths], within,
                           lambda exc: _engine_error(exc, within, self.address))
        return {path: answers[prefix + path] for path in paths}

    def inspect_many(self, container_ids):
        answers = self._get_many(["/containers/%s/json" % i for i in container_ids],
                                 QUICK_TIMEOUT)
        if answers is None:
            return super().inspect_many(container_ids)
        found = {}
        for cid in container_ids:
            answer = answers["/containers/%s/json" % cid]
            if isinstance(answer, Exception):
                raise answer
            status, info = answer
            if status == 404:
                found[cid] = None
            elif status >= 400 or not isinstance(info, dict):
                raise EngineError(status, _explanation(info))
            else:
                found[cid] = container_of_inspect(info)
        return found

    def stats_many(self, container_ids):
        """One sample of each, all in one of the engine's sampling rounds.

        One-shot (one reading) where this kernel read the container's CPU
        less than ``CPU_WINDOW`` s ago: the CPU figure is its use since then.
        Otherwise the engine takes two readings (one round more) for it.
        """
        now = time.monotonic()
        self._readings = {cid: kept for cid, kept in self._readings.items()
                          if now - kept[0] <= CPU_WINDOW}
        seen = {cid: reading for cid, (_, reading) in self._readings.items()}
        paths = {cid: "/containers/%s/stats?stream=0%s" % (cid, "&one-shot=1" if cid in seen
                                                             else "")
                 for cid in container_ids}
        answers = self._get_many(list(paths.values()), STATS_TIMEOUT)
        if answers is None:
            return super().stats_many(container_ids)
        samples = {}
        for cid in container_ids:
            answer = answers[paths[cid]]
            if isinstance(answer, Exception):
                samples[cid] = answer
                continue
            status, sample = answer
            if status >= 400 or not isinstance(sample, dict):
                samples[cid] = EngineError(status, _explanation(sample))
                continue
            reading = cpu_reading(sample.get("cpu_stats"))
            cpu = cpu_percent(sample)
            if cpu is None:
                cpu = cpu_between(seen.get(cid), reading)
            if reading is not None:
                self._readings[cid] = (time.monotonic(), reading)
            samples[cid] = Usage(memory_used(sample), cpu)
        return samples

    # --- streams into a container (agent channels, file transfers) -------------
    def exec_socket(self, container_id, cmd, user=None, workdir=None):
        # Files go this way too: the archive endpoints do not see an
        # instance's tmpfs mounts and refuse its read-only root.
        try:
            created = self.call(self._api.exec_create, container_id, cmd, stdin=True,
                                stdout=True, stderr=True, tty=False, user=user or "",
                                workdir=workdir, within=CHANGE_TIMEOUT)
        except EngineError as exc:
            raise EngineError(exc.status_code, "the engine cannot run a command in the "
                              "container: %s" % exc.explanation) from None
        exec_id = created["Id"]
        path = "/v%s/exec/%s/start" % (self._api._version, exec_id)
        sock = self._raw_upgrade(path, b'{"Detach": false, "Tty": false}')
        if sock is not None:
            return exec_id, sock, None
        raw = self.call(self._api.exec_start, exec_id, socket=True, within=None)
        return exec_id, getattr(raw, "_sock", raw), raw

    def exec_exit_code(self, exec_id, wait=5.0):
        deadline = time.monotonic() + wait
        while True:
            info = self.call(self._api.exec_inspect, exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return info["ExitCode"]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def _raw_socket_kind(self):
        """'unix' or 'tcp' when this module can open raw sockets to the engine, else None."""
        base = self._api.base_url
        if base.startswith("http+docker://localhost") or base.startswith("http+unix://"):
            return "unix"
        return "tcp" if base.startswith("http://") else None

    def _raw_socket(self):
        """A new socket to the engine (unix or plain tcp; see ``_raw_socket_kind``)."""
        if self._raw_socket_kind() == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(self._unix_path())
            except BaseException:
                sock.close()
                raise
            return sock
        url = urllib.parse.urlsplit(self._api.base_url)
        sock = socket.create_connection((url.hostname, url.port or 2375), timeout=CONNECT_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _raw_upgrade(self, path, body):
        """POST path with an HTTP upgrade, reading the response header byte by byte.

        None for transports other than unix or plain tcp (docker-py serves those).
        """
        if self._raw_socket_kind() is None:
            return None
        try:
            sock = self._raw_socket()
        except OSError as exc:
            raise _engine_error(exc, None, self.address) from None
        request = ("POST %s HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
                   % (path, len(body)))
        sock.settimeout(UPGRADE_TIMEOUT)  # an engine that accepts but never answers
        try:
            sock.sendall(request.encode("ascii") + body)
            head = bytearray()
            while not head.endswith(b"\r\n\r\n"):
                byte = sock.recv(1)
                if not byte:
                    sock.close()
                    raise EngineUnavailable("the engine closed the request")
                head += byte
        except socket.timeout:
            sock.close()
            raise EngineUnavailable(silent_engine_text(UPGRADE_TIMEOUT, self.address))
        sock.settimeout(None)
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 101 " not in status and " 200 " not in status:
            sock.close()
            raise FiddleDockError("the engine refused: %s" % status)
        return sock

    # --- attach ---------------------------------------------------------------
    def attach(self, container_id):
        # For unix and plain tcp engines the HTTP upgrade is done here, reading
        # the response header byte by byte, so no stream bytes can be left behind
        # in an HTTP library's buffer (another client's output may already be
        # flowing). Other transports go through docker-py.
        path = "/v%s/containers/%s/attach?stream=1&stdin=1&stdout=1&stderr=1" % (
            self._api._version, container_id)
        sock = self._raw_upgrade(path, b"")
        if sock is not None:
            return sock, None
        raw = self.call(self._api.attach_socket, container_id,
                        params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        return getattr(raw, "_sock", raw), raw

    def _unix_path(self):
        adapter = self._api.get_adapter(self._api.base_url)
        path = getattr(adapter, "socket_path", None)
        if not path:
            raise EngineUnavailable("cannot tell the engine's unix socket path")
        return path
