"""The pool: containers started ahead of time, so a new instance is ready at once.

``%dockerrun pool N`` (or ``%config DockerRun.pool_size = N``) keeps N
containers with the current default settings created, started and with their
agent booted, made by a background thread of the kernel (up to four at once:
an engine start is mostly waiting). Creating an instance
whose settings match takes one: the container is renamed to the instance's
container name, the pool's open agent connection is handed over, and the
thread refills the pool. ``pool 0`` drains it.

How pool containers are recognised
----------------------------------
A pooled container is named ``fiddledock_pool-<scope8>-<random>``, a prefix no
instance's container name (``fiddledock-<name>-<scope8>``) can have. The
container's name is the source of truth: labels cannot change after creation,
so a taken container keeps its pool labels (``fiddledock.pool`` = the creating
kernel as ``host:pid``, ``fiddledock.pool_key`` = a hash of its settings) and
an empty ``fiddledock.instance`` label. Whatever asks "which instance is this"
reads the name (``_spec.instance_name``).

A kernel takes only containers its own pool thread made (held in memory), so
two kernels of one notebook never take the same one. Pool containers whose
creating kernel is gone (same host) or that stopped are orphans: a starting
pool and ``%dockerrun cleanup`` remove them. Wherever the kernel ran, an
orphan also stops itself after ``idle_timeout`` like any instance: only a live
pool thread keeps its containers in use (a ``hello`` now and then).

The thread never writes to the notebook (output from a kernel thread would
land in whatever cell runs); its errors are kept in ``errors`` and shown by
``%dockerrun pool`` and ``%dockerrun list``.
"""

import atexit
import collections
import concurrent.futures
import os
import socket
import threading
import time

from ._errors import ImageNotFound, PoolSizeInvalid, short_error
from ._instance import connection_alive
from ._spec import is_pool_container_name

REFILL_DELAY = 0.5   # after a take, let the first cell run before the engine gets busy
FILL_AT_ONCE = 4  # containers started side by side: an engine start is mostly waiting
ERROR_BACKOFF = 10.0  # after a failure (image missing, engine down), wait before retrying
LABEL_POOL = "fiddledock.pool"
LABEL_KEY = "fiddledock.pool_key"


def _creator():
    return "%s:%d" % (socket.gethostname(), os.getpid())


def orphaned(container):
    """Whether a pool container (``_backend.Container``) is nobody's: stopped, or
    its kernel is gone."""
    if not container.running:
        return True
    host, _, pid = (container.labels.get(LABEL_POOL) or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's kernel: its containers idle-stop by themselves
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Launcher:
    """What a pool needs from the notebook it serves (the instance manager gives one)."""

    scope = ""  # the scope's id (``_spec.scope_id``): its containers carry it as a label
    idle_timeout = 0  # seconds an agent waits for use before its container stops itself

    def wanted(self):
        """``(spec, key)``: the settings new pool containers get now, and their key."""
        raise NotImplementedError

    def launch(self, backend, spec, labels):
        """A booted Instance (no name yet) in a new pool container made through
        ``backend`` with ``spec`` and these ``labels`` among its own."""
        raise NotImplementedError


class _Entry:
    def __init__(self, inst, key):
        self.inst = inst
        self.key = key
        self.last_used = time.monotonic()


class Pool:
    """N booted containers with the default settings, kept by a thread."""

    def __init__(self, backend, launcher):
        self.backend = backend  # the kernel's; the thread uses a clone of its own
        self.launcher = launcher
        self.size = 0
        self.errors = collections.deque(maxlen=5)  # (time.time(), text)
        self._error_count = 0
        self._ready = []  # _Entry, oldest first
        self._dead = []  # entries found dead outside the thread, for it to remove
        self._filling = 0  # containers being made right now
        self._asked = 0  # resize requests so far ...
        self._done = 0   # ... and how many of them the thread has fully carried out
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._settled = threading.Condition(self._lock)
        self._closed = False
        self._thread = None
        self._refill_at = 0.0
        self._atexit = False

    # --- what the kernel's main thread calls --------------------------------
    def resize(self, n, wait=False, timeout=120.0):
        """Keep ``n`` containers ready; ``wait`` blocks until the pool has that many."""
        n = int(n)
        if n < 0:
            raise PoolSizeInvalid(n)
        with self._lock:
            if n != self.size:
                self.errors.clear()  # a new request: old errors would only confuse
            self.size = n
            running = self._thread is not None and self._thread.is_alive()
            if running or n:  # a round of the thread will carry it out
                self._asked += 1
            if n and not running:
                self._closed = False
                self._thread = threading.Thread(target=self._run, name="fiddledock-pool",
                                                daemon=True)
                self._thread.start()
                if not self._atexit:  # a kernel that exits normally leaves no pool behind
                    atexit.register(self.close)
                    self._atexit = True
        self._wake.set()
        if wait:
            self.wait(timeout)

    def wait(self, timeout=120.0):
        """Until the pool holds its size (or a fill error happened); True if it does."""
        deadline = time.monotonic() + timeout
        with self._lock:
            errors = self._error_count
            while len(self._ready) != self.size or self._filling or self._done < self._asked:
                if self._error_count != errors:
                    return False
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None:
                    return len(self._ready) == self.size
                self._settled.wait(min(left, 0.5))
        return True

    def ready_count(self):
        with self._lock:
            self._drop_dead()
            return len(self._ready)

    def _drop_dead(self):
        """Take out ready entries whose agent connection ended (an engine restart
        or a stopped container ends it); the thread removes their containers.

        Called with the lock held: entries in ``_ready`` are used by nobody else.
        """
        dead = [e for e in self._ready if not connection_alive(e.inst.connection)]
        if dead:
            self._ready = [e for e in self._ready if e not in dead]
            self._dead.extend(dead)
            self._wake.set()

    def take(self, key, name, cname):
        """A booted instance for settings ``key``, renamed to ``cname``; or None."""
        with self._lock:
            self._drop_dead()
            for i, entry in enumerate(self._ready):
                if entry.key == key:
                    del self._ready[i]
                    break
            else:
                return None
            self._refill_at = time.monotonic() + REFILL_DELAY
        self._wake.set()
        inst = entry.inst
        try:
            if not connection_alive(inst.connection):
                raise OSError("its agent is gone")
            self.backend.rename(inst.container_id, cname)
        except Exception as exc:  # gone meanwhile, or the name is taken: make one the slow way
            self._note("a pool container could not be taken (%s)" % short_error(exc))
            inst.disconnect()
            self._remove(self.backend, inst.container_id)
            return None
        inst.adopt(name, self.backend)  # from now on the kernel's backend, not the thread's
        return inst

    def close(self):
        """Stop the thread and remove the containers still in the pool."""
        with self._lock:
            self._closed = True
            self.size = 0
            thread = self._thread
            self._thread = None
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        with self._lock:
            entries, self._ready, self._dead = self._ready + self._dead, [], []
        for entry in entries:
            entry.inst.disconnect()
            self._remove(self.backend, entry.inst.container_id)

    def describe(self):
        """One line or a few for `pool` and `list`."""
        with self._lock:
            self._drop_dead()
            text = "pool: %d ready of %d" % (len(self._ready), self.size)
            if self._filling:
                text += " (%d starting)" % self._filling
            for when, error in self.errors:
                text += "\n  pool error at %s: %s" % (time.strftime("%H:%M:%S",
                                                                    time.localtime(when)), error)
        return text

    # --- the thread --------------------------------------------------------------
    def _run(self):
        backend = self.backend.clone()
        try:
            self._remove_orphans(backend)
        except Exception as exc:
            self._note("looking for orphaned pool containers failed: %s" % short_error(exc))
        while True:
            self._wake.clear()  # a wake-up during this round makes another round
            with self._lock:
                asked = self._asked
            pause = self._keepalive_interval()
            try:
                self._reconcile(backend)
            except Exception as exc:
                self._note(short_error(exc))
                pause = ERROR_BACKOFF
            with self._lock:
                self._done = asked
                self._settled.notify_all()
                if self._closed or (self.size == 0 and not self._ready):
                    if self._thread is threading.current_thread():
                        self._thread = None
                    self._done = self._asked
                    return
            self._wake.wait(pause)

    def _keepalive_interval(self):
        idle = float(self.launcher.idle_timeout or 3600)
        return min(300.0, max(0.5, idle / 3))

    def _reconcile(self, backend):
        spec, key = self.launcher.wanted()
        # Stale (other settings), dead, or more than wanted: removed.
        with self._lock:
            self._drop_dead()
            keep = [e for e in self._ready if e.key == key]
            drop = [e for e in self._ready if e.key != key]
            drop += keep[self.size:]
            self._ready = keep[:self.size]
            drop, self._dead = drop + self._dead, []
        for entry in drop:
            entry.inst.disconnect()
            self._remove(backend, entry.inst.container_id)
        self._keep_alive(backend)
        delay = self._refill_at - time.monotonic()
        if delay > 0 and self.ready_count() < self.size:
            time.sleep(delay)
        if self.ready_count() < self.size and not backend.image_exists(spec.image):
            raise ImageNotFound(spec.image, "image %r not found on the Docker engine; the pool "
                                "cannot fill" % spec.image)
        with concurrent.futures.ThreadPoolExecutor(FILL_AT_ONCE, "fiddledock-pool-fill") as fill:
            while True:
                with self._lock:
                    missing = 0 if self._closed else self.size - len(self._ready)
                if missing <= 0:
                    return
                made = [fill.submit(self._fill_one, backend, spec, key)
                        for _ in range(min(missing, FILL_AT_ONCE))]
                concurrent.futures.wait(made)
                for future in made:
                    if future.exception() is not None:
                        raise future.exception()
                if not all(future.result() for future in made):
                    return

    def _fill_one(self, backend, spec, key):
        """One more ready container (a thread of the fill); False if it was not wanted
        any more once made (settings changed, pool shrunk or closed)."""
        with self._lock:
            self._filling += 1
        entry = None
        try:
            entry = self._make(backend, spec, key)
        finally:
            with self._lock:
                self._filling -= 1
                wanted = (entry is not None and not self._closed
                          and len(self._ready) < self.size
                          and key == self.launcher.wanted()[1])
                if wanted:
                    self._ready.append(entry)
                self._settled.notify_all()
        if not wanted:
            entry.inst.disconnect()
            self._remove(backend, entry.inst.container_id)
        return wanted

    def _make(self, backend, spec, key):
        labels = {LABEL_POOL: _creator(), LABEL_KEY: key}
        return _Entry(self.launcher.launch(backend, spec, labels), key)

    def _keep_alive(self, backend):
        """A hello to each container not used for a while, so it does not idle-stop."""
        interval = self._keepalive_interval()
        now = time.monotonic()
        with self._lock:
            due = [e for e in self._ready if now - e.last_used >= interval]
            for e in due:
                self._ready.remove(e)
        alive = []
        for entry in due:
            try:
                if entry.inst.hello(timeout=5.0) is None:
                    raise OSError("no answer")
                entry.last_used = time.monotonic()
                alive.append(entry)
            except Exception:
                entry.inst.disconnect()
                self._remove(backend, entry.inst.container_id)
        with self._lock:
            self._ready.extend(alive)

    def _remove_orphans(self, backend):
        for row in backend.list({"fiddledock.scope": self.launcher.scope}):
            if is_pool_container_name(row.name) and orphaned(row):
                self._remove(backend, row.id)

    def _remove(self, backend, container_id):
        try:
            backend.remove(container_id)
        except Exception as exc:
            self._note("could not remove pool container %s: %s"
                       % (container_id[:12], short_error(exc)))

    def _note(self, text):
        with self._lock:
            self.errors.append((time.time(), text))
            self._error_count += 1
            self._settled.notify_all()
