"""The backend seam: what FiddleDock asks of whatever runs its containers.

``Backend`` is the whole interface; ``_docker_backend.DockerBackend`` is the
Docker engine behind it, ``tests/fake_backend.py`` an in-memory one for tests
of pure logic. The rest of the package sees plain records (``Container``,
``Usage``), never an engine's JSON.

An instance's handle is a container id: an opaque string the same backend
understands (Docker's container id; a Swarm backend would hand out its
service's id and find the task's container on the node that runs it).

Errors, for every method: ``EngineUnavailable`` when the engine cannot be
reached or does not answer in time (each call waits a bounded time),
``EngineError`` (with ``status_code``) when it refuses. A container that is
gone is not an error where a method says so.
"""

import abc
import concurrent.futures
import dataclasses
import datetime
from typing import Dict, List, Optional

from ._errors import FiddleDockError

SIDE_BY_SIDE = 16  # threads of the default inspect_many / stats_many

LABEL = "fiddledock"  # every container of ours carries fiddledock=1
PING_TIMEOUT = 3.0  # seconds "does the engine answer at all" may take


@dataclasses.dataclass
class Container:
    """One container as the backend reports it.

    ``state`` is one of ``created`` (never started), ``running``, ``paused``,
    ``restarting``, ``removing``, ``exited`` or ``dead``. Records from
    ``list`` carry id, name, labels, image and state only; the other fields
    are None there and filled by ``inspect``.
    """

    id: str
    name: str                        # without a leading "/"
    labels: Dict[str, str]
    state: str
    image: str = ""                  # as the container was created from
    exit_code: Optional[int] = None
    oom_killed: bool = False
    started_at: Optional[datetime.datetime] = None  # UTC; None if never started
    memory_limit: Optional[int] = None  # bytes; None: no limit
    user: str = ""                   # the container's user ("0:0", "" = the image's)
    env: List[str] = dataclasses.field(default_factory=list)  # "KEY=value" items
    node: str = ""                   # the cluster node it runs on ("": one engine)
    node_gone: bool = False          # that node is down or its engine cannot be reached

    @property
    def running(self):
        return self.state == "running"


@dataclasses.dataclass
class Usage:
    """One sample of a running container's use; None where it cannot tell."""

    memory_used: Optional[int]   # bytes, page cache that can be dropped left out
    cpu_percent: Optional[float]  # over the sample's interval, 100 = one core


class Backend(abc.ABC):
    """A place that runs FiddleDock's containers (a Docker engine, a Swarm...).

    Reached lazily: making one contacts nothing. Methods may be called from
    several threads of one kernel except where ``clone`` says otherwise.
    """

    @abc.abstractmethod
    def clone(self):
        """A backend for another thread (the pool's): same engine, own connections."""

    # --- the engine -----------------------------------------------------------
    @abc.abstractmethod
    def ping(self, within=PING_TIMEOUT):
        """Return once the engine answers; ``EngineUnavailable`` (saying why) if it
        does not within ``within`` s."""

    def answers(self, within=PING_TIMEOUT):
        """Whether the engine answers at all within ``within`` s; never raises."""
        try:
            self.ping(within)
            return True
        except FiddleDockError:
            return False

    @abc.abstractmethod
    def runtimes(self):
        """Sorted names of the container runtimes it offers (at least ``runc``)."""

    def no_runtime_text(self, runtime, known):
        """Why ``runtime`` (not in ``known``, the runtimes offered) cannot be had here."""
        hint = (" (on Linux as root, scripts/ensure-engine.sh --with-runsc registers it)"
                if runtime == "runsc" else "")
        return ("runtime %r is not registered with this Docker engine, which has: %s%s"
                % (runtime, ", ".join(known), hint))

    @abc.abstractmethod
    def capacity(self):
        """``(cpus, memory bytes)`` one container may get at most; None where unknown."""

    # --- images -----------------------------------------------------------------
    @abc.abstractmethod
    def image_exists(self, image):
        """Whether the engine has ``image`` (no registry lookup).

        ``ImageNotFound`` when the name itself is not valid.
        """

    def prepare_image(self, image, progress):
        """Make ``image`` (which ``image_exists``) usable wherever an instance may
        run; ``progress(line)`` hears about long copies. A single engine: nothing."""

    @property
    @abc.abstractmethod
    def images(self):
        """Image I/O for building the default image: an object with
        ``exists(tag)`` -> bool, ``inspect(ref)`` -> dict, ``pull(ref, progress)``,
        ``build(context_dir, tag, progress)``, ``import_tar(path, tag)``
        (``_docker_images.DockerImages`` for Docker)."""

    # --- containers ---------------------------------------------------------------
    @abc.abstractmethod
    def create(self, name, spec, command, labels, hostname):
        """Create (not start) a container named ``name``; its id.

        ``spec`` is an ``InstanceSpec`` (image, limits, hardening: see
        ``InstanceSpec.container_config``), ``command`` the main process's
        argv, ``labels`` added to the spec's own. ``ImageNotFound`` when the
        image is missing, ``EngineError`` when refused (e.g. the name is taken).
        """

    @abc.abstractmethod
    def start(self, container_id):
        """Start a created (or stopped) container."""

    @abc.abstractmethod
    def kill(self, container_id):
        """SIGKILL the container; it stays, stopped, for its state to be reported.

        A container that is gone or not running is not an error.
        """

    @abc.abstractmethod
    def remove(self, container_id):
        """Remove the container, running or not, with its anonymous volumes.

        A container that is gone (or being removed) is not an error.
        """

    @abc.abstractmethod
    def rename(self, container_id, name):
        """Give the container a new name (a pooled one becomes an instance):
        the name ``inspect`` finds it by and ``inspect``/``list`` report from
        now on. ``EngineError`` if the name is taken. (Where the engine cannot
        rename, e.g. a Swarm service, the backend may keep the name in a label
        it can update.)"""

    @abc.abstractmethod
    def inspect(self, name_or_id):
        """The ``Container`` of that name or id, all fields filled; None if there is none."""

    @abc.abstractmethod
    def list(self, labels=None):
        """``Container`` records (summary fields) of ours, running or not, that
        carry every label in ``labels`` too."""

    @abc.abstractmethod
    def stats(self, container_id):
        """One ``Usage`` sample of a running container (may take about a second)."""

    # Many containers at once (``list`` and the panel). These defaults ask one
    # container at a time, a few side by side; a backend may do better.
    def inspect_many(self, container_ids):
        """``{id: Container, or None if it is gone}`` for each of ``container_ids``."""
        return dict(zip(container_ids, _side_by_side(self.inspect, container_ids)))

    def stats_many(self, container_ids):
        """``{id: Usage, or the exception that says why it has no sample}`` for each
        running container of ``container_ids``."""
        def sample(container_id):
            try:
                return self.stats(container_id)
            except Exception as exc:  # stopping right now, a runtime without stats
                return exc
        return dict(zip(container_ids, _side_by_side(sample, container_ids)))

    # --- streams into a container ---------------------------------------------------
    @abc.abstractmethod
    def exec_socket(self, container_id, cmd, user=None, workdir=None):
        """Run ``cmd`` in the running container: ``(exec id, socket, keepalive)``.

        The socket carries the command's stdin (shut its write side to close
        it) and its stdout/stderr in Docker's multiplexed stream format
        (``_protocol.StreamDemux`` takes it apart). ``keepalive`` is whatever
        must stay referenced while the socket is used (close both with
        ``_protocol.close_quietly``); the exec id is for ``exec_exit_code``.
        """

    @abc.abstractmethod
    def exec_exit_code(self, exec_id, wait=5.0):
        """The exit code of a finished exec; None if it still runs after ``wait`` s."""

    @abc.abstractmethod
    def attach(self, container_id):
        """``(socket, keepalive)`` attached to the container's main process's
        stdin, stdout and stderr (multiplexed as for ``exec_socket``)."""


def _side_by_side(fn, items):
    """``[fn(item) for item in items]``, a few at a time on short-lived threads."""
    if len(items) < 2:
        return [fn(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(min(SIDE_BY_SIDE, len(items))) as pool:
        return list(pool.map(fn, items))
