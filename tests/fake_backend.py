"""An in-memory backend (``_backend.Backend``) for fast tests of pure logic.

Containers are records in a dict; an exec'd channel is one end of a socket
pair whose other end a tiny fake agent serves in a thread: it answers
``hello`` with ``need_boot`` until a ``boot`` came (once per start), then
with ``ready``, and ``reset`` with ``ready``. It is never evidence that a
feature works against Docker: the real-engine tests are.
"""

import datetime
import itertools
import socket
import struct
import threading
import uuid

from fiddledock_agent.protocol import VERSION, FrameReader, encode

from fiddledock_magic._backend import LABEL, Backend, Container, Usage
from fiddledock_magic._errors import EngineError, EngineUnavailable, ImageNotFound

STDOUT = 1
MUX = struct.Struct(">BxxxL")  # Docker's stream header, as the exec stream carries it


class FakeBackend(Backend):
    """Containers kept in memory; ``calls`` records what was asked, in order."""

    def __init__(self, images=("fiddledock-sandbox:2",), runtimes=("runc",),
                 capacity=(2, 4 << 30)):
        self.containers = {}  # id -> Container
        self.image_names = set(images)
        self._runtimes = sorted(runtimes)
        self._capacity = capacity
        self.calls = []
        self.boots = []  # (container id, the agent config sent at boot)
        self.down = False  # True: every call fails as an engine that does not answer
        self._booted = set()  # container ids whose fake agent got its boot
        self._channels = {}  # container id -> [our end of each channel]
        self._execs = itertools.count(1)
        self.lock = threading.RLock()

    # --- helpers for tests ------------------------------------------------------
    def add(self, name, labels, state="running", exit_code=0, oom_killed=False,
            image="fiddledock-sandbox:2"):
        """A container as if something else had made it; returns it."""
        labels = dict(labels, **{LABEL: "1"})
        container = Container(id=uuid.uuid4().hex, name=name, labels=labels, state=state,
                              image=image, exit_code=exit_code, oom_killed=oom_killed,
                              started_at=None if state == "created" else _now(),
                              memory_limit=512 << 20)
        self.containers[container.id] = container
        return container

    def names(self):
        return sorted(c.name for c in self.containers.values())

    def _check(self, method, *args):
        self.calls.append((method,) + args)
        if self.down:
            raise EngineUnavailable("the fake engine does not answer")

    def _find(self, name_or_id):
        for container in self.containers.values():
            if name_or_id in (container.id, container.name):
                return container
        raise EngineError(404, "no such container: %s" % name_or_id)

    # --- the interface ----------------------------------------------------------------
    def clone(self):
        return self  # one shared, locked dict: threads need nothing of their own

    def ping(self, within=3.0):
        self._check("ping")

    def runtimes(self):
        self._check("runtimes")
        return list(self._runtimes)

    def capacity(self):
        self._check("capacity")
        return self._capacity

    def image_exists(self, image):
        self._check("image_exists", image)
        return image in self.image_names

    @property
    def images(self):
        raise NotImplementedError("the fake backend builds no images")

    def create(self, name, spec, command, labels, hostname):
        self._check("create", name)
        config, host_config = spec.container_config(command, labels, hostname=hostname)
        with self.lock:
            if spec.image not in self.image_names:
                raise ImageNotFound(spec.image)
            if any(c.name == name for c in self.containers.values()):
                raise EngineError(409, "the name %s is taken" % name)
            container = Container(
                id=uuid.uuid4().hex, name=name, labels=dict(config["labels"]), state="created",
                image=spec.image, memory_limit=host_config.get("mem_limit"),
                user=config["user"], env=["%s=%s" % kv for kv in config["environment"].items()])
            self.containers[container.id] = container
        return container.id

    def start(self, container_id):
        self._check("start", container_id)
        with self.lock:
            container = self._find(container_id)
            container.state, container.exit_code = "running", 0
            container.started_at = _now()
            self._booted.discard(container.id)  # a fresh main process: needs its boot

    def kill(self, container_id):
        self._check("kill", container_id)
        with self.lock:
            container = self.containers.get(container_id)
            if container is not None and container.running:
                container.state, container.exit_code = "exited", 137
                self._hang_up(container_id)

    def remove(self, container_id):
        self._check("remove", container_id)
        with self.lock:
            if self.containers.pop(container_id, None) is not None:
                self._hang_up(container_id)

    def rename(self, container_id, name):
        self._check("rename", container_id, name)
        with self.lock:
            if any(c.name == name for c in self.containers.values()):
                raise EngineError(409, "the name %s is taken" % name)
            self._find(container_id).name = name

    def inspect(self, name_or_id):
        self._check("inspect", name_or_id)
        with self.lock:
            try:
                found = self._find(name_or_id)
            except EngineError:
                return None
            return Container(**dict(vars(found), labels=dict(found.labels), env=list(found.env)))

    def list(self, labels=None):
        self._check("list", labels)
        wanted = dict(labels or {}, **{LABEL: "1"})
        with self.lock:
            return [Container(id=c.id, name=c.name, labels=dict(c.labels), state=c.state,
                              image=c.image)
                    for c in self.containers.values()
                    if all(c.labels.get(k) == v for k, v in wanted.items())]

    def stats(self, container_id):
        self._check("stats", container_id)
        with self.lock:
            if not self._find(container_id).running:
                raise EngineError(409, "container is not running")
        return Usage(memory_used=10 << 20, cpu_percent=1.5)

    def exec_socket(self, container_id, cmd, user=None, workdir=None):
        self._check("exec_socket", container_id)
        with self.lock:
            if not self._find(container_id).running:
                raise EngineError(409, "container is not running")
            ours, theirs = socket.socketpair()
            self._channels.setdefault(container_id, []).append(ours)
        threading.Thread(target=self._serve, args=(container_id, ours), daemon=True).start()
        return next(self._execs), theirs, None

    def exec_exit_code(self, exec_id, wait=5.0):
        return 0

    def attach(self, container_id):
        raise EngineError(501, "the fake backend does not attach")

    # --- the fake agent -----------------------------------------------------------------
    def _serve(self, container_id, sock):
        reader = FrameReader()
        try:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    return
                reader.feed(data)
                for header, _ in reader.frames():
                    answer = self._answer(container_id, header)
                    if answer is not None:
                        frame = encode(answer)
                        sock.sendall(MUX.pack(STDOUT, len(frame)) + frame)
        except OSError:
            return

    def _answer(self, container_id, header):
        kind = header.get("type")
        with self.lock:
            if kind == "boot":
                self._booted.add(container_id)
                self.boots.append((container_id, header.get("config")))
                return None
            if kind == "hello" and container_id not in self._booted:
                return {"type": "need_boot"}
        if kind in ("hello", "reset"):
            return {"type": "ready", "version": VERSION, "busy": False}
        return None

    def _hang_up(self, container_id):
        for sock in self._channels.pop(container_id, []):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _now():
    return datetime.datetime.now(datetime.timezone.utc)
