"""Instances: named, hardened containers with a live agent, as this kernel sees them.

``Instance`` is one container plus the connection to its agent; it runs
cells and turns what the agent sends into calls on a ``CellHandler`` (the
magic's renderer). It reaches its container only through the backend it
is given (``_backend.Backend``); finding,
creating and removing instances is ``_manager.InstanceManager``'s job.
"""

import getpass
import itertools
import os
import re
import socket
import threading
import time

from fiddledock_agent import protocol as messages
from fiddledock_agent.protocol import METADATA_KEY

from ._agent_files import boot_payload, relay_source
from ._budget import Flood, cell_budget
from ._errors import (AgentError, EngineUnavailable, FiddleDockError, InstanceBusy, InstanceLost,
                      MalformedEvent, format_size, plain_text, short_error)
from ._events import BadEvent, done_header, read_event
from ._interrupt_latch import InterruptLatch
from ._pacing import cell_running
from ._protocol import VERSION, AgentConnection, ConnectionClosed, ProtocolError

DEFAULT_GRACE = 2.0  # DockerRun.interrupt_grace's default, when none is given
DEADLINE_SLACK = 5.0  # beyond the agent's own escalation, before it counts as wedged
BOOT_TIMEOUT = 60.0  # python start under gVisor on a loaded machine can be slow
PROBE_TIMEOUT = 2.0  # a status probe of an idle agent answers in well under 1 ms
STOP_SETTLE = 2.0  # how long a container whose channel ended may take to show as stopped
CONTROL_TIMEOUT = 15.0  # a forced reset ends a cell first: the agent's kill wait, and more
AGENT_USER = "0"  # relays run as the agent's uid: the only peers it accepts
GIVEN_UP_WAIT = 60.0  # s the next cell waits for a cell given up on a silent engine
# Under gVisor a dead sandbox (the host's out-of-memory killer ends its Sentry)
# leaves the exec's stream open: a cell silent this long asks the engine.
SILENT_CHECK = 3.0
# What runsc's exec says on stderr when its sandbox died under it: no news.
SANDBOX_GONE = re.compile(r'in sandbox "[0-9a-f]+": urpc method "[\w.]+" failed')

# Containers whose cell was given up because the engine did not answer (the
# request may reach the agent when the engine wakes).
_given_up = set()


def user_name():
    """This process's user name (its uid where there is none)."""
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def client_description():
    """Who this client is, as other kernels are told when its cell blocks them."""
    return "the kernel with pid %d on %s (user %s)" % (os.getpid(), socket.gethostname(),
                                                        user_name())


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
    """Whether an open connection is fit for use, without waiting or reading
    (see ``AgentConnection.drain``)."""
    return conn is not None and conn.drain()


def describe_stop(container):
    """Why a container (a ``_backend.Container``, None: gone) is not running."""
    if container is None:
        return "it was removed"
    if container.node_gone:
        return ("the node running it, %s, is gone (down, or its engine cannot be reached)"
                % container.node)
    limit = " (limit %s)" % format_size(container.memory_limit) if container.memory_limit else ""
    if container.oom_killed and gvisor(container):
        return ("it ran out of memory%s and was stopped: under gVisor the host ends the "
                "whole sandbox (its own memory counts too)" % limit)
    if container.oom_killed:
        return "it ran out of memory and was stopped"
    if container.state == "exited" and container.exit_code == 137 and gvisor(container):
        return ("it had stopped (exit code 137: killed; under gVisor running out of "
                "memory%s also ends the whole sandbox so)" % limit)
    if container.state == "exited":
        return "it had stopped (exit code %s)" % container.exit_code
    state = container.state or "stopped"
    return "it " + _STATE_WORDS.get(state, "is %s" % state)


def gvisor(container):
    return container.labels.get("fiddledock.runtime") == "runsc"


# The engine's container states, as a sentence's end ("it ...").
_STATE_WORDS = {"removing": "is being deleted", "dead": "crashed", "created": "was never started",
                "paused": "is paused", "restarting": "is restarting"}


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

    def __init__(self, backend, name, container, agent_config=None, config=None):
        """``container``: a ``_backend.Container``; ``agent_config``: the settings
        sent to a fresh agent at boot; ``config``: a DockerRun, for the limits
        the kernel enforces on each cell (defaults without one)."""
        self.backend = backend
        self.name = name
        self.container_id = container.id
        self.image = container.labels.get("fiddledock.image") or container.image
        self.agent_config = dict(agent_config or {})
        self.config = config
        self.connection = None
        self.pending_notice = None  # from a status probe, for the next cell
        # Held while a cell or reset talks to the agent, so a status probe
        # (another thread) never reads the same connection.
        self.lock = threading.RLock()
        self.running_cell = False  # a cell of this kernel is running (for probe)
        # Set by the manager before it restarts, deletes or resets the instance
        # under a running cell ("restarted from the panel"): the cell's message.
        self.ended_by = None
        self._cell_ids = itertools.count(1)
        self._watch_engine = gvisor(container)

    def adopt(self, name, backend):
        """A pooled instance becomes instance ``name``, used through ``backend``
        (the kernel's, no longer the pool thread's) from now on."""
        self.name = name
        self.backend = backend

    def alive(self):
        with self.lock:
            if not connection_alive(self.connection):
                return False
        # Under gVisor a dead sandbox's exec stream stays open: the engine knows.
        return not self._watch_engine or self._running()

    def _running(self):
        try:
            container = self.backend.inspect(self.container_id)
        except FiddleDockError:  # a slow engine: the cell finds out
            return True
        return container is not None and container.running

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
        if fresh:
            self.backend.start(self.container_id)
        conn, header = self._open_channel()
        if header["type"] == "need_boot":
            try:
                self._boot(conn)
                conn.send(messages.hello(client_description()))
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

    def _open_channel(self, passive=False):
        """A channel of our own to the agent (an exec'd relay), greeted:
        ``(connection, the 'ready' or 'need_boot' header)``."""
        sock, keepalive = self.backend.exec_socket(
            self.container_id, ["python3", "-I", "-S", "-c", relay_source(), str(BOOT_TIMEOUT)],
            user=AGENT_USER)[1:]
        conn = AgentConnection(sock, keepalive)
        try:
            conn.send(messages.hello(client_description(), passive))
            return conn, self._wait(conn, ("ready", "need_boot"))
        except BaseException:
            conn.close()
            raise

    def control(self, request, timeout=CONTROL_TIMEOUT):
        """One request over a channel of its own; the agent's answer header.

        For acting on a cell another client (or this kernel's main thread)
        runs: a forced ``interrupt`` or ``reset``. Never waits on ``lock``.
        """
        conn, header = self._open_channel(passive=True)
        try:
            if header["type"] == "need_boot":
                raise AgentError("instance %r has no agent running" % self.name)
            conn.send(request)
            try:
                answer = _next_of(conn, ("ready", "busy", "interrupted"), timeout)
            except ConnectionClosed:
                raise InstanceLost(self.name, self._why_dead(conn)) from None
            if answer is None:
                raise AgentError("instance %r: the agent did not answer within %d s"
                                 % (self.name, timeout))
            return answer
        finally:
            conn.close()

    def _boot(self, conn):
        modules, payload = boot_payload()
        conn.send(messages.boot(modules, self.agent_config), payload)

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
        conn.send(messages.hello(client_description(), passive))
        return _next_of(conn, ("ready",), timeout)

    def _why_dead(self, conn=None):
        # The channel can end a moment before the engine marks the container stopped.
        deadline = time.monotonic() + STOP_SETTLE
        while True:
            container = self.backend.inspect(self.container_id)
            if not (container and container.running) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if container and container.running:
            reason = "the connection to its agent ended while its container still runs"
        else:
            reason = describe_stop(container)
        detail = bytes(conn.agent_stderr).decode("utf-8", "replace").strip() if conn else ""
        if detail and not SANDBOX_GONE.search(detail):
            reason += ": " + plain_text(detail.splitlines()[-1], 300)
        return reason

    def disconnect(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    # --- running cells ------------------------------------------------------
    def execute(self, code, handler, timeout=0, reset=False, output_limit=None,
                interrupt_grace=None, cell_name=None):
        """Run code; returns the agent's ``done`` header.

        ``cell_name`` (e.g. "In[5]"): how tracebacks name the cell, whose code
        starts on the editor's line 2 (below the ``%%dockerrun`` line).

        A KeyboardInterrupt here (the notebook's interrupt button) becomes an
        interrupt in the container; a second one asks for a kill.
        """
        with self.lock, cell_running():
            self.running_cell = True
            try:
                return self._after_given_up(handler, lambda: self._execute(
                    code, handler, timeout, reset, output_limit, interrupt_grace, cell_name))
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

    def _execute(self, code, handler, timeout, reset, output_limit, interrupt_grace,
                 cell_name=None):
        conn = self.connection
        cell_id = next(self._cell_ids)
        request = messages.execute(
            cell_id, timeout or 0, bool(reset), bool(handler.can_ask), cell_name,
            first_line=2,  # the editor's line of the source's first: after the magic's line
            output_limit=int(output_limit) if output_limit else None,
            interrupt_grace=None if interrupt_grace is None else float(interrupt_grace))
        try:
            conn.send(request, code.encode("utf-8", "surrogateescape"))
        except ConnectionClosed:
            self.disconnect()
            raise InstanceLost(self.name, self._why_dead(conn)) from None
        grace = DEFAULT_GRACE if interrupt_grace is None else float(interrupt_grace)
        budget = cell_budget(output_limit, self.config)
        self._input_wait = 0.0
        # The agent ends a cell by its time limit (two escalation steps of grace
        # later at most), or after a kill request, on its own; past these
        # deadlines it is wedged or hostile, and the kernel stops waiting.
        started = time.monotonic()
        answer_by = started + timeout + 2 * grace + DEADLINE_SLACK if timeout else None
        interrupts = 0
        kill_asked = None
        heard = started
        with InterruptLatch() as latch:
            while True:
                try:
                    while interrupts < latch.count:  # forwarded between frames, never mid-frame
                        interrupts += 1
                        conn.send(messages.interrupt(cell_id, kill=interrupts > 1))
                        if interrupts > 1 and kill_asked is None:
                            kill_asked = time.monotonic()
                            answer_by = min(answer_by or float("inf"),
                                            kill_asked + 2 * grace + DEADLINE_SLACK)
                    if answer_by is not None and time.monotonic() > answer_by + self._input_wait:
                        self._stop_wedged(started + self._input_wait, timeout, kill_asked)
                    frame = conn.recv(timeout=latch.poll or 1.0)
                    if frame is None:
                        if self._watch_engine and time.monotonic() - heard > SILENT_CHECK:
                            heard = time.monotonic()
                            self._check_running(conn)
                        continue
                    heard = time.monotonic()
                    done = self._on_event(frame, cell_id, handler, latch, budget)
                    if done is not None:
                        return done
                except KeyboardInterrupt:  # not latched (another thread, or input())
                    latch.count += 1
                except ConnectionClosed:
                    self.disconnect()
                    raise InstanceLost(self.name, self._why_dead(conn)) from None
                except AgentError as exc:  # bytes that are no frame
                    # The connection is this client's own: dropping it drops the rest
                    # of a frame too large to read, and the next cell reconnects.
                    cause = exc.__context__ if isinstance(exc.__context__, ProtocolError) else exc
                    self.disconnect()
                    raise MalformedEvent(self.name, str(cause)) from None
                except BadEvent as exc:
                    self.disconnect()
                    raise MalformedEvent(self.name, str(exc)) from None
                except Flood as exc:
                    self._stop("its agent kept sending far past this cell's limits (%s), "
                               "so its container was stopped" % exc)

    def _check_running(self, conn):
        """End the cell if its container stopped while its channel stays open."""
        if not self._running():  # a slow engine counts as running: the deadline holds
            self.disconnect()
            raise InstanceLost(self.name, self._why_dead(conn))

    def _stop_wedged(self, started, timeout, kill_asked):
        """The agent did not end the cell in time: stop its container.

        Unless the engine itself does not answer (frozen, say): a kill it took in
        now could land whenever it wakes, on a later cell. Then nothing is sent
        to the engine and the cell is given up. Its request may still reach the
        agent when the engine wakes (it cannot be taken back): the agent then
        sees this connection gone and interrupts it, and the next cell waits
        for that rather than failing as busy (see ``execute``).
        """
        now = time.monotonic()
        if kill_asked is not None:
            what = "was not stopped %.0f s after the kill request" % (now - kill_asked)
        else:
            what = ("did not end %.0f s after its %g s time limit"
                    % (now - started - timeout, timeout))
        try:
            self.backend.ping()
        except FiddleDockError as exc:
            _given_up.add(self.container_id)
            self.disconnect()
            raise EngineUnavailable("instance %r: its cell was given up: %s; nothing was "
                                    "stopped" % (self.name, exc)) from None
        self._stop("the cell %s: its agent stopped answering (the cell's code may have "
                   "stopped or taken over it), so its container was stopped" % what)

    def _stop(self, reason):
        """Stop the container, so the next cell starts afresh, and end the cell with reason."""
        failed = self._kill()
        if failed:
            reason += "; stopping it failed (%s): `%%dockerrun restart %s`" % (failed, self.name)
        raise InstanceLost(self.name, reason) from None

    def _kill(self):
        """Drop the connection and kill the container; why that failed, or None."""
        self.disconnect()  # first: an attach stream nobody reads holds up the engine's kill
        try:
            self.backend.kill(self.container_id)
        except Exception as exc:  # the cell still ends with one clean error
            return short_error(exc)
        return None

    def _on_event(self, frame, cell_id, handler, latch, budget):
        """Hand one event of the running cell to handler; the ``done`` header when it ends."""
        event = read_event(frame)
        if event.id not in (cell_id, None):
            budget.junk_frame("events of another cell")
            return None
        kind = event.kind
        if kind == "busy":
            raise InstanceBusy(self.name, frame[0].get("owner"), frame[0].get("seconds"))
        shown = budget.admit(event)
        for text in budget.take_notices():
            handler.notice(text)
        if shown is None:
            return None
        if kind == "stream":
            handler.stream(event.name, event.data)
        elif kind in ("display", "result"):
            data = event.data()
            for text in event.skipped:
                handler.notice(text)
            metadata = dict(event.metadata)
            control = dict(event.control)
            if control.get("display_id"):  # an instance can address only its own displays
                control["display_id"] = "%s-%s-%s" % (self.name, self.container_id[:12],
                                                      control["display_id"])
            if kind == "display":
                metadata[METADATA_KEY] = control
                handler.display(data, metadata)
            else:
                handler.result(data, metadata)
        elif kind == "notice":
            handler.notice(event.text)
        elif kind == "input_request":
            asked = time.monotonic()
            with latch.paused():  # the frontend's own input wait must see it
                self._answer(handler, event)
            # Time a person took is not the agent's delay (its done may be waiting unread).
            self._input_wait += time.monotonic() - asked
        elif kind == "done":
            return done_header(event)
        else:
            budget.junk_frame("events of type %r" % kind[:40])
        return None

    def _answer(self, handler, event):
        try:
            value = handler.ask(event.prompt, event.password)
            reply = messages.input_reply(value=str(value))
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            reply = messages.input_reply(error="%s: %s" % (type(exc).__name__, exc))
        self.connection.send(reply)

    def reset(self):
        """A fresh namespace in the same container."""
        with self.lock:
            conn = self.connection
            conn.send(messages.reset())
            header = self._wait(conn, ("ready", "busy"))
            if header["type"] == "busy":
                raise InstanceBusy(self.name, header.get("owner"), header.get("seconds"))

    def probe(self):
        """'ready' or 'busy' from the agent, without counting as use; None if unknown.

        A cell of this kernel running is 'busy' without asking.
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
            return "busy" if header.get("busy") else "ready"
        except (ConnectionClosed, AgentError, OSError):
            return None
        finally:
            self.lock.release()
