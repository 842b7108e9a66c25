"""The engine seam: every call FiddleDock makes to Docker goes through here.

The instance layer asks for containers in plain terms (create, start,
attach, inspect, remove, stats, archives); a Kubernetes backend would
implement the same methods. ``DOCKER_HOST`` and the other ``DOCKER_*``
variables are honoured through ``docker.from_env``.
"""

import os
import socket
import struct
import threading
import time
import urllib.parse

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from ._docker_images import DockerImages
from ._errors import EngineError, EngineUnavailable, FiddleDockError, ImageNotFound, short_error
from ._spec import shown

# How long each kind of call may wait for the engine, in seconds. A live engine
# answers the quick ones in milliseconds; a frozen one (SIGSTOP, overload)
# accepts the connection and never answers, and docker-py would wait 60 s.
QUICK_TIMEOUT = 5.0    # inspect, list, info, rename, exec inspect
CHANGE_TIMEOUT = 30.0  # create, start, kill, remove, exec create: seconds on a loaded machine
STATS_TIMEOUT = 15.0   # one stats sample waits for two readings, about a second apart
PING_TIMEOUT = 3.0     # "does the engine answer at all", before acting on an instance
CONNECT_TIMEOUT = 5.0  # opening a raw socket to the engine
UPGRADE_TIMEOUT = 30   # seconds for the engine to answer an attach or exec request
LABEL = "fiddledock"  # every container of ours carries fiddledock=1
MAX_CONNECTIONS = 32  # HTTP connections kept per engine client

# Every way a wait for the engine can run out (requests, urllib3, raw sockets).
TIMEOUTS = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)
_NO_LIMIT = object()  # a call's timeout when Engine.call did not choose one


def engine_address():
    return os.environ.get("DOCKER_HOST") or "the default socket"


def silent_engine_text(seconds):
    """The message for an engine that accepts requests but does not answer them."""
    return ("the Docker engine at %s did not answer within %g s (stopped, frozen or "
            "overloaded?); try again when it answers" % (engine_address(), seconds))


def _engine_error(exc, within=None):
    where = engine_address()
    timed_out = isinstance(exc, TIMEOUTS) or "timed out" in str(exc).lower()
    if timed_out:
        return EngineUnavailable(silent_engine_text(within or CONNECT_TIMEOUT))
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
    """Where Engine.call puts the timeout it chose for this thread's requests on api.

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


class Engine:
    """A Docker engine, reached lazily on first use."""

    def __init__(self, client=None):
        self._client = client
        self._from_env = client is None
        self._info = None

    def clone(self):
        """An Engine for another thread: its own HTTP connections to the same engine."""
        return Engine() if self._from_env else Engine(self._client)

    @property
    def client(self):
        if self._client is None:
            try:
                # Room for `list` to sample many containers side by side. The
                # timeout covers the version check made while connecting.
                client = docker.from_env(max_pool_size=MAX_CONNECTIONS, timeout=QUICK_TIMEOUT)
            except docker.errors.DockerException as exc:
                raise _engine_error(exc, QUICK_TIMEOUT) from None
            client.api.timeout = CHANGE_TIMEOUT  # for calls that choose none
            self._client = client
        return self._client

    @property
    def api(self):
        return self.client.api

    def call(self, fn, *args, within=QUICK_TIMEOUT, **kwargs):
        """Run an API call that may wait ``within`` s for the engine (None: no limit).

        Connection failures and timeouts become EngineUnavailable, refusals
        EngineError (with the status code), so no docker-py traceback reaches a cell.
        """
        current = _call_timeout(self.api)
        saved = current.seconds
        current.seconds = within
        try:
            return fn(*args, **kwargs)
        except TIMEOUTS as exc:
            raise _engine_error(exc, within) from None
        except (requests.exceptions.ConnectionError, ConnectionError) as exc:
            raise _engine_error(exc, within) from None
        except docker.errors.APIError as exc:
            raise EngineError(exc.status_code, exc.explanation or str(exc)) from None
        except docker.errors.DockerException as exc:
            raise _engine_error(exc, within) from None
        finally:
            current.seconds = saved

    def answers(self, within=PING_TIMEOUT):
        """Whether the engine answers a ping within ``within`` s."""
        try:
            self.call(self.api.ping, within=within)
            return True
        except FiddleDockError:
            return False

    def info(self):
        """The engine's `docker info` (asked once: runtimes and capacity do not change)."""
        if self._info is None:
            self._info = self.call(self.api.info)
        return self._info

    def runtimes(self):
        """Names of the OCI runtimes the engine has registered."""
        return sorted((self.info().get("Runtimes") or {}).keys()) or ["runc"]

    def capacity(self):
        """``(cpus, memory bytes)`` of the engine's machine; None where it does not say."""
        info = self.info()
        return info.get("NCPU") or None, info.get("MemTotal") or None

    # --- images -------------------------------------------------------------
    @property
    def images(self):
        """Image I/O for building the default image (look up, pull, build, import)."""
        return DockerImages(self.api)

    def image_exists(self, image):
        try:
            self.call(self.api.inspect_image, image)
            return True
        except EngineError as exc:
            if exc.status_code == 404:
                return False
            if exc.status_code == 400:
                why = exc.explanation.rsplit(": ", 1)[-1]  # the reason, not the name again
                raise ImageNotFound(image, "%s is not a valid image name (%s)"
                                    % (shown(image), why[:200])) from None
            raise

    # --- containers -----------------------------------------------------------
    def inspect(self, name_or_id):
        """The container's inspect data, or None if there is none."""
        try:
            return self.call(self.api.inspect_container, name_or_id)
        except EngineError as exc:
            if exc.status_code == 404:
                return None
            raise

    def list(self, labels=None, all=True):
        """Summaries of our containers, optionally narrowed by more labels."""
        filters = ["%s=1" % LABEL]
        for key, value in (labels or {}).items():
            filters.append("%s=%s" % (key, value))
        return self.call(self.api.containers, all=all, filters={"label": filters})

    def create(self, name, config, host_config):
        """Create a container; ``config`` and ``host_config`` are plain dicts."""
        hc = self.api.create_host_config(**host_config)
        try:
            created = self.call(self.api.create_container, name=name,
                                host_config=hc, within=CHANGE_TIMEOUT, **config)
        except EngineError as exc:
            if exc.status_code == 404 and "image" in exc.explanation.lower():
                raise ImageNotFound(config.get("image")) from None
            raise EngineError(exc.status_code, "the engine refused to create %s: %s"
                              % (name, exc.explanation)) from None
        return created["Id"]

    def start(self, container_id):
        try:
            self.call(self.api.start, container_id, within=CHANGE_TIMEOUT)
        except EngineError as exc:
            raise EngineError(exc.status_code, "the engine could not start the container: %s"
                              % exc.explanation) from None

    def kill(self, container_id):
        """SIGKILL the container (it stays, stopped, for its state to be reported)."""
        try:
            self.call(self.api.kill, container_id, within=CHANGE_TIMEOUT)
        except EngineError as exc:
            if exc.status_code not in (404, 409):  # gone, or not running
                raise

    def remove(self, container_id):
        try:
            self.call(self.api.remove_container, container_id, force=True, v=True,
                      within=CHANGE_TIMEOUT)
        except EngineError as exc:
            if exc.status_code not in (404, 409):  # gone, or removal already in progress
                raise

    def rename(self, container_id, name):
        self.call(self.api.rename, container_id, name)

    def stats(self, container_id):
        """One stats sample (no streaming)."""
        return self.call(self.api.stats, container_id, stream=False, within=STATS_TIMEOUT)

    # --- exec (file transfers) -------------------------------------------------
    def exec_socket(self, container_id, cmd, user=None, workdir=None):
        """Run cmd in the container: ``(exec id, socket, keepalive)``.

        The socket carries the command's stdin (shut its write side to close
        it) and its stdout/stderr, multiplexed as for attach. Used for files:
        the archive endpoints do not see an instance's tmpfs mounts and refuse
        its read-only root.
        """
        try:
            created = self.call(self.api.exec_create, container_id, cmd, stdin=True,
                                stdout=True, stderr=True, tty=False, user=user or "",
                                workdir=workdir, within=CHANGE_TIMEOUT)
        except EngineError as exc:
            raise EngineError(exc.status_code, "the engine cannot run a command in the "
                              "container: %s" % exc.explanation) from None
        exec_id = created["Id"]
        path = "/v%s/exec/%s/start" % (self.api._version, exec_id)
        sock = self._raw_upgrade(path, b'{"Detach": false, "Tty": false}')
        if sock is not None:
            return exec_id, sock, None
        raw = self.call(self.api.exec_start, exec_id, socket=True, within=None)
        return exec_id, getattr(raw, "_sock", raw), raw

    def exec_exit_code(self, exec_id, wait=5.0):
        """The exit code of a finished exec (None if it is still running after wait)."""
        deadline = time.monotonic() + wait
        while True:
            info = self.call(self.api.exec_inspect, exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return info["ExitCode"]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def _raw_upgrade(self, path, body):
        """POST path with an HTTP upgrade, reading the response header byte by byte.

        None for transports other than unix or plain tcp (docker-py serves those).
        """
        base = self.api.base_url
        try:
            if base.startswith("http+docker://localhost") or base.startswith("http+unix://"):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(self._unix_path())
            elif base.startswith("http://"):
                url = urllib.parse.urlsplit(base)
                sock = socket.create_connection((url.hostname, url.port or 2375),
                                                timeout=CONNECT_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                return None
        except OSError as exc:
            raise _engine_error(exc) from None
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
            raise EngineUnavailable(silent_engine_text(UPGRADE_TIMEOUT))
        sock.settimeout(None)
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 101 " not in status and " 200 " not in status:
            sock.close()
            raise FiddleDockError("the engine refused: %s" % status)
        return sock

    # --- attach ---------------------------------------------------------------
    def attach(self, container_id):
        """A raw socket attached to the container's stdin, stdout and stderr.

        For unix and plain tcp engines the HTTP upgrade is done here, reading
        the response header byte by byte, so no stream bytes can be left behind
        in an HTTP library's buffer (another client's output may already be
        flowing). Other transports go through docker-py.
        """
        path = "/v%s/containers/%s/attach?stream=1&stdin=1&stdout=1&stderr=1" % (
            self.api._version, container_id)
        sock = self._raw_upgrade(path, b"")
        if sock is not None:
            return sock, None
        raw = self.call(self.api.attach_socket, container_id,
                        params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        return getattr(raw, "_sock", raw), raw

    def _unix_path(self):
        adapter = self.api.get_adapter(self.api.base_url)
        path = getattr(adapter, "socket_path", None)
        if not path:
            raise EngineUnavailable("cannot tell the engine's unix socket path")
        return path


class StreamDemux:
    """Docker's multiplexed stream (attach or exec without a TTY) taken apart.

    Each chunk comes behind an 8-byte header: stream (1 stdout, 2 stderr)
    and length.
    """

    HEADER = struct.Struct(">BxxxL")

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        """``[(stream, bytes), ...]`` for every whole chunk received so far."""
        buf = self._buf
        buf += data
        out = []
        pos = 0
        size_of_header = self.HEADER.size
        while len(buf) - pos >= size_of_header:
            stream, size = self.HEADER.unpack_from(buf, pos)
            if len(buf) - pos - size_of_header < size:
                break
            out.append((stream, bytes(buf[pos + size_of_header:pos + size_of_header + size])))
            pos += size_of_header + size
        del buf[:pos]
        return out


def close_quietly(sock, keepalive=None):
    """Close a raw socket and the docker-py response that may stand behind it."""
    for thing in (sock, keepalive):
        if thing is None:
            continue
        try:
            thing.close()
        except Exception:  # closing must never fail a cell
            pass
