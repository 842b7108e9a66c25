"""Instances: named, hardened containers with a live agent, as this kernel sees them.

``Instance`` is one container plus the connection to its agent; it runs
cells and turns what the agent sends into calls on a ``CellHandler`` (the
magic's renderer). It reaches Docker only through ``Engine``; finding,
creating and removing instances is ``_manager.InstanceManager``'s job.
"""

import contextlib
import itertools
import signal
import threading
import time

from ._agent_files import boot_payload
from ._engine import PING_TIMEOUT, silent_engine_text
from ._errors import AgentError, EngineUnavailable, InstanceBusy, InstanceLost
from ._protocol import VERSION, AgentConnection, ConnectionClosed

DEFAULT_GRACE = 2.0  # DockerRun.interrupt_grace's default, when none is given
AGENT_SLACK = 10.0  # beyond the agent's own escalation, before it counts as wedged
BOOT_TIMEOUT = 60.0  # python start under gVisor on a loaded machine can be slow
PROBE_TIMEOUT = 2.0  # a status probe of an idle agent answers in well under 1 ms
GIVEN_UP_WAIT = 60.0  # s the next cell waits for a cell given up on a silent engine

# Containers whose cell was given up because the engine did not answer (the
# request may reach the agent when the engine wakes).
_given_up = set()


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


def _next_of(conn, kinds, timeout):
    """The header of the next frame of one of kinds within timeout s; None if none came."""
    deadline = time.monotonic() + timeout
    while True:
        frame = conn.recv(timeout=max(0.0, deadline - time.monotonic()))
        if frame is None:
            return None
        if frame[0].get("type") in kinds:
            return frame[0]


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
        self.running_cell = False  # a cell of this kernel is running (for probe)
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
        try:
            header = _next_of(conn, kinds, BOOT_TIMEOUT)
        except ConnectionClosed:
            raise InstanceLost(self.name, self._why_dead(conn)) from None
        if header is None:
            raise AgentError("instance %r: the agent did not answer within %d s"
                             % (self.name, BOOT_TIMEOUT))
        return header

    def hello(self, passive=False, timeout=PROBE_TIMEOUT):
        """The agent's ``ready`` header, or None without an answer in time.

        ``passive``: a status look that does not count as use (idle timeout).
        """
        conn = self.connection
        conn.send({"type": "hello", "passive": True} if passive else {"type": "hello"})
        return _next_of(conn, ("ready",), timeout)

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
            self.running_cell = True
            try:
                return self._after_given_up(handler, lambda: self._execute(
                    code, handler, timeout, reset, output_limit, interrupt_grace))
            finally:
                self.running_cell = False

    def _after_given_up(self, handler, run_cell):
        """run_cell(); while a cell given up on a silent engine holds the agent, wait for it.

        That cell reaches the agent late, when the engine wakes, and runs to
        its end: "busy" for it would blame another client. The wait is bounded.
        """
        if self.container_id not in _given_up:
            return run_cell()
        deadline = time.monotonic() + GIVEN_UP_WAIT
        told = False
        while True:
            try:
                done = run_cell()
                _given_up.discard(self.container_id)
                return done
            except InstanceBusy:
                if time.monotonic() > deadline:
                    _given_up.discard(self.container_id)
                    raise
                if not told:
                    handler.notice("waiting for the cell given up while the Docker engine "
                                   "did not answer: it reached the instance late")
                    told = True
                time.sleep(0.2)

    def _execute(self, code, handler, timeout, reset, output_limit, interrupt_grace):
        conn = self.connection
        cell_id = next(self._cell_ids)
        request = {"type": "execute", "id": cell_id, "timeout": timeout or 0,
                   "reset": bool(reset), "stdin": bool(handler.can_ask)}
        if output_limit:
            request["output_limit"] = int(output_limit)
        if interrupt_grace is not None:
            request["interrupt_grace"] = float(interrupt_grace)
        try:
            conn.send(request, code.encode("utf-8", "surrogateescape"))
        except ConnectionClosed:
            self.disconnect()
            raise InstanceLost(self.name, self._why_dead(conn)) from None
        grace = DEFAULT_GRACE if interrupt_grace is None else float(interrupt_grace)
        # The agent ends a cell by its time limit, or after a kill request, on
        # its own; past these deadlines it is wedged (stopped, say, by the code).
        answer_by = time.monotonic() + timeout + 3 * grace + AGENT_SLACK if timeout else None
        interrupts = 0
        with _InterruptLatch() as latch:
            while True:
                try:
                    while interrupts < latch.count:  # forwarded between frames, never mid-frame
                        interrupts += 1
                        conn.send({"type": "interrupt", "id": cell_id, "kill": interrupts > 1})
                        if interrupts > 1:
                            kill_by = time.monotonic() + 2 * grace + AGENT_SLACK
                            answer_by = min(answer_by or kill_by, kill_by)
                    if answer_by is not None and time.monotonic() > answer_by:
                        self._stop_wedged(conn)
                    frame = conn.recv(timeout=latch.poll or 1.0)
                    if frame is None:
                        continue
                    if self._on_event(frame, cell_id, handler, latch):
                        return frame[0]
                except KeyboardInterrupt:  # not latched (another thread, or input())
                    latch.count += 1
                except ConnectionClosed:
                    self.disconnect()
                    raise InstanceLost(self.name, self._why_dead(conn)) from None

    def _stop_wedged(self, conn):
        """The agent no longer answers: stop its container, so the next cell starts afresh.

        Unless the engine itself does not answer (frozen, say): a kill it took in
        now could land whenever it wakes, on a later cell. Then nothing is sent
        to the engine and the cell is given up. Its request may still reach the
        agent when the engine wakes (it cannot be taken back), so the next cell
        waits for it rather than failing as busy (see ``execute``). No interrupt
        is queued behind it: one that reaches the worker before the cell's code
        starts is ignored, and the escalation would then kill the worker.
        """
        if not self.engine.answers():
            _given_up.add(self.container_id)
            self.disconnect()
            raise EngineUnavailable("instance %r: its cell was given up: %s; nothing was "
                                    "stopped" % (self.name, silent_engine_text(PING_TIMEOUT)))
        self.engine.kill(self.container_id)
        self.disconnect()
        raise InstanceLost(self.name, "its agent stopped answering (the cell's code may have "
                                      "stopped or killed it), so its container was stopped")

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

        A cell of this kernel running is 'busy' without asking; the drainer
        holds the lock only for a moment.
        """
        if self.running_cell:
            return "busy"
        if not self.lock.acquire(timeout=PROBE_TIMEOUT):
            return "busy" if self.running_cell else None
        try:
            conn = self.connection
            if not connection_alive(conn):
                return None
            header = self.hello(passive=True)
            if header is None:
                return None
            if header.get("notice"):  # the agent hands it out once
                self.pending_notice = header["notice"]
            return "busy" if header.get("busy") else "idle"
        except (ConnectionClosed, AgentError, OSError):
            return None
        finally:
            self.lock.release()
