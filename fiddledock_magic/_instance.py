"""Instances: named, hardened containers with a live agent, as this kernel sees them.

``Instance`` is one container plus the connection to its agent; it runs
cells and turns what the agent sends into calls on a ``CellHandler``.
``InstanceManager`` finds, creates, restarts and removes instances of one
scope (a notebook), reports their status (``statuses``, for `list` and the
panel), cleans up, and owns the pool (``_pool.Pool``). Both reach Docker only
through ``Engine``.

An instance's identity is its container's name, ``fiddledock-<name>-<scope8>``
(``_spec.container_name``): that is how a restarted kernel finds its
containers again, and a pooled container becomes an instance by being renamed.
"""

import concurrent.futures
import contextlib
import getpass
import itertools
import os
import select
import signal
import socket
import threading
import time

from . import _image
from ._agent_files import boot_payload, bootstrap_source
from ._engine import LABEL, Engine
from ._errors import (AgentError, FiddleDockError, ImageNotFound, InstanceBusy,
                      InstanceConflict, InstanceLost, InstanceNotFound)
from ._protocol import VERSION, AgentConnection, ConnectionClosed
from ._spec import (InstanceSpec, InvalidSetting, check_name, container_name,
                    instance_name, is_pool_container_name, scope_id)
from ._status import InstanceStatus, cpu_percent, memory_used, parse_time

BOOT_TIMEOUT = 60.0  # python start under gVisor on a loaded machine can be slow
PROBE_TIMEOUT = 2.0  # a status probe of an idle agent answers in well under 1 ms
STATUS_THREADS = 32  # stats samples take ~1 s each on the engine: run them side by side


class CellHandler:
    """What an instance calls while a cell runs; the magic's renderer implements it."""

    can_ask = False  # whether ask() can get an answer from a person

    def stream(self, name, data):
        """Raw output bytes; name is 'stdout' or 'stderr'."""

    def display(self, data, metadata):
        """A MIME bundle from display() in the container."""

    def result(self, data, metadata):
        """The MIME bundle of the cell's last expression."""

    def notice(self, text):
        """Something the user should know (restarts, truncation, builds)."""

    def ask(self, prompt, password):
        """An answer for input() in the container; raise to refuse."""
        raise EOFError("no frontend can answer input()")


def _owner():
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return "%s@%s" % (user, socket.gethostname())


def connection_alive(conn):
    """Whether an open connection still reaches its agent, without waiting.

    Frames waiting for us between cells are stale (e.g. from an interrupted
    cell) and are dropped; an ended stream means the container stopped.
    """
    if conn is None or conn.closed:
        return False
    try:
        while conn.recv(timeout=0) is not None:
            pass
    except (ConnectionClosed, AgentError, OSError):
        conn.closed = True
        return False
    return True


def describe_stop(state):
    """Why a container is not running, from its inspect State."""
    if not state:
        return "it is gone"
    if state.get("OOMKilled"):
        return "its container ran out of memory and was stopped"
    status = state.get("Status", "stopped")
    code = state.get("ExitCode")
    if status == "exited":
        return "its container had stopped (exit code %s)" % code
    return "its container is %s" % status


class _InterruptLatch:
    """SIGINT (the notebook's interrupt button) while a cell runs: counted, not raised.

    A KeyboardInterrupt raised at an arbitrary point of the wait loop could
    cut a frame in half; the loop looks at ``count`` between frames instead,
    waking every ``poll`` seconds. Only in the main thread and over Python's
    standard handler; elsewhere KeyboardInterrupt is caught as before.
    """

    POLL = 0.1

    def __init__(self):
        self.count = 0
        self.poll = None
        self._old = None

    def _hit(self, signum, frame):
        self.count += 1

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._hit)
            self.poll = self.POLL
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    @contextlib.contextmanager
    def paused(self):
        if self._old is None:
            yield
            return
        signal.signal(signal.SIGINT, self._old)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._hit)


class Instance:
    """One instance: its container and, once connected, its agent."""

    def __init__(self, manager, name, info, engine=None):
        self.manager = manager
        self.name = name
        self.container_id = info["Id"]
        labels = info.get("Config", {}).get("Labels") or {}
        self.image = labels.get("fiddledock.image") or info.get("Config", {}).get("Image")
        self.connection = None
        self.pending_notice = None  # from a status probe, for the next cell
        # Held while a cell or reset talks to the agent, so a status probe
        # (another thread) never reads the same connection.
        self.lock = threading.RLock()
        self._cell_ids = itertools.count(1)
        self._engine = engine

    @property
    def engine(self):
        return self._engine or self.manager.engine

    def alive(self):
        with self.lock:
            return connection_alive(self.connection)

    def idle(self):
        """True when no cell or probe of this kernel is using the connection."""
        if self.lock.acquire(blocking=False):
            self.lock.release()
            return True
        return False

    # --- connecting -----------------------------------------------------------
    def connect(self, fresh=False):
        """Attach to the agent; boot it if the container has just started.

        Returns a notice from the agent (e.g. a worker that died between
        cells), or None.
        """
        if self.connection is not None and not self.connection.closed:
            return None
        sock, keepalive = self.engine.attach(self.container_id)
        conn = AgentConnection(sock, keepalive)
        try:
            if fresh:
                self.engine.start(self.container_id)
                self._boot(conn)
            conn.send({"type": "hello"})
            header = self._wait(conn, ("ready", "need_boot"))
            if header["type"] == "need_boot":
                self._boot(conn)
                conn.send({"type": "hello"})
                header = self._wait(conn, ("ready",))
        except BaseException:
            conn.close()
            raise
        if header.get("version") != VERSION:
            conn.close()
            raise AgentError("instance %r runs agent protocol %s, this FiddleDock speaks %s; "
                             "restart it with %%dockerrun restart %s"
                             % (self.name, header.get("version"), VERSION, self.name))
        self.connection = conn
        return header.get("notice")

    def _boot(self, conn):
        modules, payload = boot_payload()
        conn.send({"type": "boot", "modules": modules, "config": self.manager.agent_config()},
                  payload)

    def _wait(self, conn, kinds):
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            try:
                frame = conn.recv(timeout=max(0.0, deadline - time.monotonic()))
            except ConnectionClosed:
                raise InstanceLost(self.name, self._why_dead(conn)) from None
            if frame is None:
                raise AgentError("instance %r: the agent did not answer within %d s"
                                 % (self.name, BOOT_TIMEOUT))
            if frame[0].get("type") in kinds:
                return frame[0]

    def _why_dead(self, conn=None):
        info = self.engine.inspect(self.container_id)
        reason = describe_stop(info and info.get("State"))
        detail = bytes(conn.agent_stderr).decode("utf-8", "replace").strip() if conn else ""
        if detail:
            reason += ": " + detail.splitlines()[-1][:300]
        return reason

    def disconnect(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    # --- running cells ------------------------------------------------------
    def execute(self, code, handler, timeout=0, reset=False, output_limit=None,
                interrupt_grace=None):
        """Run code; returns the agent's ``done`` header.

        A KeyboardInterrupt here (the notebook's interrupt button) becomes an
        interrupt in the container; a second one asks for a kill.
        """
        with self.lock:
            return self._execute(code, handler, timeout, reset, output_limit, interrupt_grace)

    def _execute(self, code, handler, timeout, reset, output_limit, interrupt_grace):
        conn = self.connection
        cell_id = next(self._cell_ids)
        request = {"type": "execute", "id": cell_id, "timeout": timeout or 0,
                   "reset": bool(reset), "stdin": bool(handler.can_ask)}
        if output_limit:
            request["output_limit"] = int(output_limit)
        if interrupt_grace is not None:
            request["interrupt_grace"] = float(interrupt_grace)
        conn.send(request, code.encode("utf-8", "surrogateescape"))
        interrupts = 0
        with _InterruptLatch() as latch:
            while True:
                try:
                    while interrupts < latch.count:  # forwarded between frames, never mid-frame
                        interrupts += 1
                        conn.send({"type": "interrupt", "id": cell_id, "kill": interrupts > 1})
                    frame = conn.recv(timeout=latch.poll)
                    if frame is None:
                        continue
                    if self._on_event(frame, cell_id, handler, latch):
                        return frame[0]
                except KeyboardInterrupt:  # not latched (another thread, or input())
                    latch.count += 1
                except ConnectionClosed:
                    self.disconnect()
                    raise InstanceLost(self.name, self._why_dead(conn)) from None

    def _on_event(self, frame, cell_id, handler, latch):
        """Hand one event of the running cell to handler; True when it is ``done``."""
        header, payload = frame
        if header.get("id") not in (cell_id, None):
            return False
        kind = header.get("type")
        if kind == "stream":
            handler.stream(header.get("name"), payload)
        elif kind == "display":
            handler.display(header.get("data") or {}, header.get("metadata") or {})
        elif kind == "result":
            handler.result(header.get("data") or {}, header.get("metadata") or {})
        elif kind == "notice":
            handler.notice(header.get("text", ""))
        elif kind == "input_request":
            with latch.paused():  # the frontend's own input wait must see it
                self._answer(handler, header)
        elif kind == "busy":
            raise InstanceBusy(self.name)
        elif kind == "done":
            return True
        return False

    def _answer(self, handler, header):
        try:
            value = handler.ask(header.get("prompt", ""), bool(header.get("password")))
            reply = {"type": "input_reply", "value": str(value)}
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            reply = {"type": "input_reply", "error": "%s: %s" % (type(exc).__name__, exc)}
        self.connection.send(reply)

    def reset(self):
        """A fresh namespace in the same container."""
        with self.lock:
            conn = self.connection
            conn.send({"type": "reset"})
            header = self._wait(conn, ("ready", "busy"))
            if header["type"] == "busy":
                raise InstanceBusy(self.name)

    def probe(self):
        """'idle' or 'busy' from the agent, without counting as use; None if unknown.

        A cell of this kernel holds the lock: that is 'busy' without asking.
        """
        if not self.lock.acquire(blocking=False):
            return "busy"
        try:
            conn = self.connection
            if not connection_alive(conn):
                return None
            conn.send({"type": "hello", "passive": True})
            deadline = time.monotonic() + PROBE_TIMEOUT
            while True:
                frame = conn.recv(timeout=max(0.0, deadline - time.monotonic()))
                if frame is None:
                    return None
                if frame[0].get("type") == "ready":
                    if frame[0].get("notice"):  # the agent hands it out once
                        self.pending_notice = frame[0]["notice"]
                    return "busy" if frame[0].get("busy") else "idle"
        except (ConnectionClosed, AgentError, OSError):
            return None
        finally:
            self.lock.release()


class _Drainer:
    """Reads this kernel's idle connections so that another client never stalls.

    Docker copies a container's stdout to every attached client in turn: one
    that does not read (this kernel between its cells) blocks, once its socket
    buffer is full, the output of a cell another kernel runs in the same
    instance -- and that cell's end. Frames that arrive between our cells are
    not ours (or stale) and are dropped. A daemon thread that never writes.
    """

    INTERVAL = 0.5  # how soon a connection whose cell just ended is watched again

    def __init__(self, manager):
        self.manager = manager
        self._stop = threading.Event()
        self._thread = None

    def ensure(self):
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="fiddledock-drain",
                                            daemon=True)
            self._thread.start()

    def stop(self):
        self._stop.set()

    def _run(self):
        while not self._stop.is_set():
            watch = {}
            for inst in list(self.manager.instances.values()):
                conn = inst.connection
                if conn is not None and not conn.closed and inst.idle():
                    watch[conn.sock] = inst
            if not watch:
                self._stop.wait(self.INTERVAL)
                continue
            try:
                readable, _, _ = select.select(list(watch), [], [], self.INTERVAL)
            except (OSError, ValueError):  # a socket was closed meanwhile
                self._stop.wait(0.05)
                continue
            for sock in readable:
                inst = watch[sock]
                if inst.lock.acquire(blocking=False):  # else a cell started: it reads
                    try:
                        if inst.connection is not None and inst.connection.sock is sock:
                            connection_alive(inst.connection)
                    finally:
                        inst.lock.release()


class InstanceManager:
    """The instances of one scope (a notebook), created with one config.

    An instance is identified by its container's name (``_spec.container_name``
    of the instance name and the scope), never by a label: a container taken
    from the pool was created under another name and its labels cannot change.
    """

    def __init__(self, config, engine=None):
        from ._pool import Pool
        self.config = config
        self.engine = engine or Engine()
        self.instances = {}  # name -> Instance, connected in this kernel
        self.drainer = _Drainer(self)
        self.pool = Pool(self)
        if config.pool_size:
            self.pool.resize(config.pool_size)
        config.observe(lambda change: self.pool.resize(change["new"]), "pool_size")
        # Names mean other containers in another scope: forget this one's connections.
        config.observe(lambda change: self.disconnect_all(), "scope")
        # New default settings: the pool replaces its containers now, not at its next round.
        config.observe(lambda change: self.pool.resize(self.pool.size),
                       ["image", "memory", "cpus", "pids", "disk", "network", "runtime",
                        "env", "idle_timeout", "output_limit", "interrupt_grace", "scope"])

    @property
    def scope(self):
        return self.config.scope

    def agent_config(self):
        return {
            "idle_timeout": self.config.idle_timeout,
            "output_limit": self.config.output_limit,
            "interrupt_grace": self.config.interrupt_grace,
        }

    def default_spec(self, image=None):
        c = self.config
        return InstanceSpec(image=image or c.image, memory=c.memory, cpus=c.cpus,
                            pids=c.pids, disk=c.disk, network=c.network,
                            runtime=c.runtime, env=dict(c.env))

    def pool_key(self, spec):
        """What a pooled container must have been made with to serve ``spec``."""
        return spec.key({"agent": self.agent_config(), "scope": self.scope})

    def labels(self, name):
        """Labels of a new container: ours, its scope, its owner.

        ``name`` is None for a pool container (its instance is not known yet).
        """
        return {
            LABEL: "1",
            "fiddledock.instance": name or "",
            "fiddledock.scope": scope_id(self.scope),
            "fiddledock.scope_path": self.scope[-200:],
            "fiddledock.owner": _owner(),
        }

    # --- getting an instance ready ------------------------------------------
    def get(self, name, image=None, notice=lambda text: None, progress=lambda line: None):
        """The instance, connected: re-attached, restarted or created as needed."""
        check_name(name)
        inst = self.instances.get(name)
        if inst is not None and inst.alive():
            if image and image != inst.image:
                raise InstanceConflict(
                    "instance %r already runs image %r, not %r; delete it or pick another name"
                    % (name, inst.image, image))
            if inst.pending_notice:
                notice(inst.pending_notice)
                inst.pending_notice = None
            return inst
        if inst is not None:
            inst.disconnect()
        info = self.engine.inspect(container_name(name, self.scope))
        if info is None:
            if inst is not None:
                notice("instance %r was gone (removed, or the engine restarted); "
                       "created a new one: its previous state is lost" % name)
            self.instances.pop(name, None)
            return self.create(name, self.default_spec(image), progress=progress, _absent=True)
        old = inst
        inst = Instance(self, name, info)
        if image and image != inst.image:
            raise InstanceConflict(
                "instance %r already runs image %r, not %r; delete it or pick another name"
                % (name, inst.image, image))
        if not info["State"].get("Running"):
            notice("instance %r was not running (%s); restarted it: its previous state is lost"
                   % (name, describe_stop(info["State"])))
            text = inst.connect(fresh=True)
        else:
            if old is not None and old.container_id != inst.container_id:
                notice("instance %r was replaced by a new container (restarted or recreated "
                       "elsewhere): its previous state is lost" % name)
            text = inst.connect()
        if text:
            notice(text)
        self.instances[name] = inst
        self.drainer.ensure()
        return inst

    def create(self, name, spec, progress=lambda line: None, _absent=False):
        """A new instance from spec; an error if one of that name exists.

        A ready container from the pool is used when its settings match.
        """
        check_name(name)
        spec.validate()
        self.check_runtime(spec.runtime)
        cname = container_name(name, self.scope)
        if not _absent and self.engine.inspect(cname) is not None:
            raise InstanceConflict("instance %r already exists" % name)
        inst = self.pool.take(self.pool_key(spec), name, cname)
        if inst is None:
            self._ensure_image(spec.image, progress)
            inst = self.start_container(cname, name, spec, self.labels(name))
        self.instances[name] = inst
        self.drainer.ensure()
        return inst

    def start_container(self, cname, name, spec, labels, engine=None):
        """Create, start and boot a container; an Instance connected to it."""
        engine = engine or self.engine
        config, host_config = spec.container_config(
            ["python3", "-c", bootstrap_source()], labels)
        cid = engine.create(cname, config, host_config)
        info = {"Id": cid, "Config": {"Labels": config["labels"], "Image": spec.image}}
        inst = Instance(self, name, info, engine=engine)
        try:
            inst.connect(fresh=True)
        except BaseException:
            engine.remove(cid)
            raise
        inst._engine = None if engine is self.engine else engine
        return inst

    def check_runtime(self, runtime, engine=None):
        if runtime == "runc":
            return
        known = (engine or self.engine).runtimes()
        if runtime not in known:
            hint = (" (on Linux as root, scripts/ensure-engine.sh --with-runsc registers it)"
                    if runtime == "runsc" else "")
            raise InvalidSetting("runtime %r is not registered with this Docker engine, which "
                                 "has: %s%s" % (runtime, ", ".join(known), hint))

    def _ensure_image(self, image, progress):
        if self.engine.image_exists(image):
            return
        if image != _image.DEFAULT_IMAGE:
            raise ImageNotFound(image)
        progress("The default image %s is missing; building it once (a few minutes)..." % image)
        _image.build_default_image(self.engine.client, image, progress=progress)

    # --- managing ---------------------------------------------------------------
    def find(self, name):
        """Inspect data of the named instance's container, or InstanceNotFound."""
        info = self.engine.inspect(container_name(check_name(name), self.scope))
        if info is None:
            raise InstanceNotFound(name)
        return info

    def list(self):
        """Container summaries of this scope's instances (pool containers left out)."""
        rows = self.engine.list({"fiddledock.scope": scope_id(self.scope)})
        return [r for r in rows if self.name_of(r) is not None]

    def name_of(self, summary):
        """The instance a container summary (or inspect data) stands for, or None."""
        names = summary.get("Names") or [summary.get("Name") or ""]
        for cname in names:
            name = instance_name(cname, self.scope)
            if name is not None:
                return name
        return None

    def names(self):
        return sorted(self.name_of(r) for r in self.list())

    def delete(self, name):
        info = self.find(name)
        inst = self.instances.pop(name, None)
        if inst is not None:
            inst.disconnect()
        self.engine.remove(info["Id"])

    def delete_all(self):
        names = []
        for summary in self.list():
            name = self.name_of(summary)
            inst = self.instances.pop(name, None)
            if inst is not None:
                inst.disconnect()
            self.engine.remove(summary["Id"])
            names.append(name)
        return sorted(names)

    def restart(self, name, progress=lambda line: None):
        """A new container with the same settings: state is lost."""
        info = self.find(name)
        spec = InstanceSpec.from_container(info, self.default_spec())
        self.delete(name)
        return self.create(name, spec, progress=progress)

    def reset(self, name):
        self.find(name)  # reset never creates
        self.get(name).reset()

    def cleanup(self, all_scopes=False):
        """Remove stopped and orphaned containers; their instance names.

        Removed: every instance container that is not running (stopped by
        its idle timeout, by hand, or dead) and every pool container that is
        stopped or whose creating kernel is gone (same host). Running
        instances stay: after a kernel restart they are re-attached. Only
        this notebook's scope unless ``all_scopes``.
        """
        from ._pool import orphaned
        labels = None if all_scopes else {"fiddledock.scope": scope_id(self.scope)}
        removed = []
        for row in self.engine.list(labels):
            cname = (row.get("Names") or ["?"])[0].lstrip("/")
            if is_pool_container_name(cname):
                if not orphaned(row):
                    continue
            elif row.get("State") == "running":
                continue
            self.engine.remove(row["Id"])
            name = self.name_of(row)
            if name is not None and self.instances.get(name) is not None \
                    and self.instances[name].container_id == row["Id"]:
                self.instances.pop(name).disconnect()
            removed.append(name or cname)
        return removed

    # --- status -----------------------------------------------------------------
    def statuses(self):
        """One InstanceStatus per instance of this scope, sorted by name.

        The engine's stats endpoint takes about a second per sample, so the
        containers are inspected, sampled and probed side by side.
        """
        rows = self.list()
        if not rows:
            return []
        workers = min(STATUS_THREADS, len(rows))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(self._status_of, rows))
        return sorted((r for r in results if r is not None), key=lambda r: r.name)

    def _status_of(self, summary):
        name = self.name_of(summary)
        info = self.engine.inspect(summary["Id"])
        if info is None:  # removed while we looked
            return None
        state = info.get("State") or {}
        labels = (info.get("Config") or {}).get("Labels") or {}
        host = info.get("HostConfig") or {}
        row = InstanceStatus(
            name=name,
            image=labels.get("fiddledock.image") or (info.get("Config") or {}).get("Image", ""),
            status="stopped",
            started_at=parse_time(state.get("StartedAt")),
            memory_used=None,
            memory_limit=host.get("Memory") or None,
            cpu_percent=None,
            container_id=info["Id"],
            container_name=info.get("Name", "").lstrip("/"),
            is_default=(name == self.config.default_instance),
        )
        if not state.get("Running"):
            row.status, row.note = _stopped_status(state)
            return row
        try:
            sample = self.engine.stats(info["Id"])
            row.memory_used = memory_used(sample)
            row.cpu_percent = cpu_percent(sample)
        except Exception as exc:  # a container stopping right now, a runtime without stats
            row.note = "no stats: %s" % str(exc).splitlines()[0][:100] if str(exc) else ""
        inst = self.instances.get(name)
        answer = None
        if inst is not None and inst.container_id == info["Id"]:
            answer = inst.probe()
        if answer is None:
            row.status = "running"
            if not row.note:
                row.note = "not connected from this kernel"
        else:
            row.status = answer
        return row

    def disconnect_all(self):
        for inst in self.instances.values():
            inst.disconnect()
        self.instances.clear()

    def close(self):
        self.drainer.stop()
        self.pool.close()
        self.disconnect_all()


# Exit codes of a container that was stopped rather than crashed: clean exit,
# SIGINT, SIGKILL and SIGTERM (docker stop).
_STOP_CODES = (0, 130, 137, 143)


def _stopped_status(state):
    """('stopped' or 'dead', why) for a container that is not running."""
    if state.get("OOMKilled"):
        return "dead", "out of memory"
    status = state.get("Status")
    if status == "created":
        return "stopped", "never started"
    if status == "dead" or state.get("ExitCode") not in _STOP_CODES:
        return "dead", "exit code %s" % state.get("ExitCode")
    return "stopped", "exit code %s" % state.get("ExitCode")


__all__ = ["CellHandler", "Instance", "InstanceManager", "FiddleDockError"]
