"""The supervisor: the agent's long-lived process in the container.

It owns the clients' channels (``clients``), the worker process that runs
cells (``workers``), and everything that has to happen even when the
cell's code misbehaves: time limits, interrupts escalating to a kill, the
cell's output (capped, coalesced, back-pressured: ``output``), reporting why
a worker died (``notices``), and stopping the container after
``idle_timeout`` without any client request. This module is the decisions:
which request does what, when a cell ends and how. (A little over 500 lines,
a third of them docstrings: those decisions read best in one place.)

Single-threaded: one selector loop, so no request waits on a busy cell.

Clients: each arrives through its own exec'd relay (see protocol.py) and has
its own byte stream; a bad frame drops that client only. A cell whose client
is gone (its kernel died or gave up) is interrupted like a Ctrl-C and ended
by the usual escalation; a cell asked for meanwhile by another client waits
for that, instead of being refused as busy.

Privileges: run as root with only SETUID, SETGID and KILL, the supervisor
forks the worker, which drops to the sandbox uid before any cell code runs,
so nothing a cell starts can signal, trace or write into the supervisor.

Escalation (a timeout, or the notebook's interrupt button; each further
interrupt request or each ``interrupt_grace`` moves one step on; the step a
cell has reached is its ``stage``):

1. ``SIGINT_SENT``: SIGINT to the worker's process group: KeyboardInterrupt
   in the cell's code (and in its child processes, as a local Ctrl-C would).
   Namespace kept. When the cell then ends, every other process still
   running is killed.
2. ``OTHERS_KILLED``: if it is still running, SIGKILL to every other process
   in the container (child processes, ``setsid`` daemons), then SIGINT to
   the worker again. Namespace kept if the worker now finishes the cell.
3. Still running: SIGKILL of the worker. A fresh worker replaces it, and the
   cell and the next one say that the state was lost.
"""

import os
import selectors
import signal
import time

from fiddledock_agent import clients as clients_mod
from fiddledock_agent import interrupts
from fiddledock_agent import limits
from fiddledock_agent import notices
from fiddledock_agent import output
from fiddledock_agent import probes
from fiddledock_agent import protocol
from fiddledock_agent import seccomp
from fiddledock_agent import workers
from fiddledock_agent.cell import OTHERS_KILLED, RUNNING, SIGINT_SENT, Cell

READ_SIZE = workers.READ_SIZE
MAX_WAIT = 86400.0  # the longest single select() wait
SANDBOX_UID = 1000  # who cells run as when the agent runs as root
DEFAULTS = {
    "idle_timeout": 3600.0,
    "interrupt_grace": 2.0,
    "output_limit": 4 * 1024 * 1024,
    "home": None,
    "uid": SANDBOX_UID,
    "gid": SANDBOX_UID,
}

class Supervisor:
    def __init__(self, config, listener, first_client, take_client):
        self.config = dict(DEFAULTS)
        self.config.update({k: v for k, v in (config or {}).items() if v is not None})
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        home = self.config.get("home") or os.environ.get("HOME")
        self.tmpfs = ["/tmp"] + ([home] if home else [])
        # Who the worker becomes: the sandbox user when we are root (we stay
        # out of the cell's reach), else ourselves (a local run).
        identity = None
        if os.getuid() == 0:
            identity = (int(self.config["uid"]), int(self.config["gid"]))
        # Sweeping every other process is only sane as a container's main
        # process (PID 1, or docker-init's child); never on a shared machine.
        contained = os.getpid() == 1 or os.getppid() == 1
        self.selector = selectors.DefaultSelector()
        # SIGCHLD wakes the loop: a worker whose socket a child process still
        # holds open never shows EOF, but its exit is still seen.
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        # `docker stop`: end cleanly (as PID 1, without an init, SIGTERM would be ignored).
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "running", False))
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._on_wake)
        self.workers = workers.WorkerSlot(self.selector, identity, home, contained,
                                          self._on_worker_sock, self._on_output)
        self.output = output.CellOutput(
            lambda client, header, payload: self.clients.send(client, header, payload,
                                                              bounded=False),
            self.workers.watch)
        self.clients = clients_mod.Clients(self.selector, listener, take_client,
                                           self._on_frames, self._on_drop, self.output.written)
        self.deferred = None  # (client, header, payload): waits for a gone client's cell
        self.notice = None  # told to the next client that asks
        self.last_activity = time.monotonic()
        self.running = True
        self.workers.spawn()
        self.clients.add(*first_client)

    @property
    def cell(self):
        """The cell being run, or None (its output is where it lives)."""
        return self.output.cell

    @cell.setter
    def cell(self, cell):
        self.output.cell = cell
        if cell is None:  # back-pressure is the cell's: the next one starts with the worker read
            self.workers.watch(True)

    @property
    def worker(self):
        """The current worker process, or None."""
        return self.workers.current

    def _on_output(self, name, data):
        self.output.stream(name, data)

    # --- events from the worker -----------------------------------------------
    def _on_worker_sock(self, _mask):
        w = self.worker
        try:
            data = w.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._worker_gone()
            return
        self._feed_worker(w, data)

    def _feed_worker(self, w, data):
        w.reader.feed(data)
        try:
            frames = w.reader.frames()
        except protocol.ProtocolError:
            self._worker_died(notices.WORKER_WROTE_GARBAGE)
            return
        # No draining of the pipes first: the worker sends a frame only once the
        # pipes are empty, so pipe data pending now was written after it.
        for header, payload in frames:
            self._on_worker_frame(header, payload)
            if self.worker is not w:
                return

    def _on_worker_frame(self, header, payload):
        kind = header.get("type")
        if kind == "stream":
            self.output.stream(header.get("name", "stdout"), payload)
            return
        if self.cell is None:
            return
        if kind in ("display", "result", "input_request"):
            self.output.event(header, payload)
        elif kind == "done":
            self._finish_cell(header)

    def _cell_notices(self, worker_died=False):
        """What the user should know about the cell that is ending."""
        cell = self.cell
        texts = []
        if probes.pids_max_count() > cell.pids_before:
            texts.append(notices.process_limit_hit(probes.pids_limit(), cell.children_killed))
        out_of_memory = probes.oom_kill_count() > cell.oom_before
        if not worker_died:  # else the worker's reason names them
            if out_of_memory:
                texts.append(notices.out_of_memory())
            texts.extend(limits.full_folders(self.tmpfs, out_of_memory))
        return texts

    def _finish_cell(self, header):
        cell = self.cell
        if cell.why_interrupted and not cell.children_killed and self.worker is not None:
            # Ctrl-C ends the whole job: what outlived the SIGINT (a fork bomb's
            # children forked after it, say) would go on burning the CPU.
            cell.children_killed = self.workers.kill_children()
        for text in self._cell_notices():
            self.output.notice(text)
        if cell.why_interrupted == "timeout":
            if header.get("status") == "interrupted":
                header["status"] = "timeout"
                header["reason"] = notices.timed_out_and_stopped(cell.timeout,
                                                                 cell.children_killed)
            else:
                self.output.notice(notices.timed_out_but_went_on(cell.timeout,
                                                                 cell.children_killed))
        elif cell.why_interrupted and cell.children_killed:
            self.output.notice(notices.interrupted_children_ended())
        self.output.event(header)
        self.cell = None
        self.last_activity = time.monotonic()
        self._start_deferred()

    def _worker_gone(self):
        """EOF on the worker's socket: it exited, or closed the socket itself."""
        w = self.worker
        status = w.reap(timeout=0.5)
        if status is None:
            self._worker_died(notices.WORKER_CLOSED_CHANNEL)
        else:
            self._worker_died()

    def _on_wake(self, _mask):
        """A signal arrived (SIGCHLD): did the worker exit?"""
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        if os.getpid() == 1:  # no init in this container: orphans are ours to reap
            self.workers.reap_zombies()
        w = self.worker
        if w is None or not w.exited():
            return
        # Its last words may still be in the socket (a child holding it open
        # keeps EOF from ever coming).
        for _ in range(64):
            try:
                data = w.sock.recv(READ_SIZE)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._feed_worker(w, data)
            if self.worker is not w:
                return
        self._worker_died()

    def _worker_died(self, reason=None, start_deferred=True):
        """The worker is gone (or is to be killed): report, then start anew.

        One that died by itself between cells right after it started is not
        replaced until a client asks (memory full of files would make a loop).
        """
        w = self.worker
        soon = (self.cell is None and w is not None
                and time.monotonic() - w.started < 1.0)
        old, status = self.workers.replace(spawn=not soon)
        if reason is None:
            status = status or 0
            oom = (old is not None and os.WIFSIGNALED(status)
                   and os.WTERMSIG(status) == signal.SIGKILL
                   and probes.oom_kill_count() > old.oom_before)
            reason = notices.exit_reason(status, oom, probes.tmpfs_used(self.tmpfs) if oom else 0)
        reason = "; ".join([reason] + limits.full_folders(self.tmpfs, crowded=True))
        cell = self.cell
        if cell is not None:
            for text in self._cell_notices(worker_died=True):
                self.output.notice(text)
            self.output.event(protocol.done("killed", reason=reason, cause=cell.why_interrupted,
                                            state_lost=True))
            self.cell = None
        self.notice = notices.state_lost(reason, during_cell=cell is not None)
        self.last_activity = time.monotonic()
        if start_deferred:
            self._start_deferred()

    # --- clients ---------------------------------------------------------------
    def _send(self, client, header, payload=b""):
        """An answer to client (only the running cell's client may fall far behind)."""
        cell = self.cell
        bounded = cell is None or cell.client is not client
        self.clients.send(client, header, payload, bounded=bounded)

    def _on_drop(self, client):
        """A client is gone: a cell of its own is interrupted, its waiting cell forgotten."""
        if self.deferred is not None and self.deferred[0] is client:
            self.deferred = None
        cell = self.cell
        if cell is not None and cell.client is client:
            cell.client = None  # its events have nowhere to go
            if cell.stage == RUNNING:  # as a local kernel's death would end its code
                self._escalate("client_gone")

    def _on_frames(self, client, frames):
        for header, payload in frames:
            if client.gone:
                return
            if not (header.get("type") == "hello" and header.get("passive")):
                self.last_activity = time.monotonic()  # a status probe is not use
            try:
                self._on_request(client, header, payload)
            except Exception as exc:  # a request we cannot make sense of: that client goes
                self._send(client, protocol.notice(notices.failed_request(exc)))
                self.clients.drop(client)
                return

    def _ready(self, client, **ended):
        """Answer ``ready``; ``ended=`` (whose cell it ended) only when answering a reset."""
        self.workers.ensure()
        self._send(client, protocol.ready(self.cell is not None,
                                          self.worker.pid if self.worker else None,
                                          self.notice, **ended))
        self.notice = None

    def _owner(self):
        """Whose cell is running, and for how long (for busy / interrupted answers)."""
        cell = self.cell
        return cell.owner, round(time.monotonic() - cell.started, 1)

    def _on_request(self, client, header, payload):
        kind = header.get("type")
        cell = self.cell
        if kind == "hello":
            who = header.get("who")
            if isinstance(who, str) and who:
                client.who = who[:200]
            self._ready(client)
        elif kind == "execute":
            self._execute(client, header, payload)
        elif kind == "interrupt":
            if header.get("force") and (cell is None or cell.client is not client):
                # another kernel stops this cell: it is told whose it was
                if cell is None:
                    self._send(client, protocol.interrupted())
                    return
                self._send(client, protocol.interrupted(*self._owner()))
                self._escalate("interrupt" if cell.stage == RUNNING else cell.why_interrupted)
            elif cell is not None and cell.client is client:
                if header.get("kill") or cell.stage == RUNNING:
                    self._escalate("interrupt")
                else:  # pressed again: another KeyboardInterrupt, as locally
                    self._sigint(group=True)
        elif kind == "input_reply":
            # Only the client whose cell asked may answer it.
            if cell is not None and self.worker is not None and cell.client is client:
                value, error = header.get("value"), header.get("error")
                reply = protocol.input_reply(value if isinstance(value, str) else None,
                                             error if isinstance(error, str) else None)
                self._to_worker(protocol.encode(reply))
        elif kind == "reset":
            ended = None
            if cell is not None:
                if not header.get("force"):
                    self._send(client, protocol.busy(*self._owner()))
                    return
                owner, seconds = self._owner()
                ended = {"owner": owner, "seconds": seconds}
                reason = header.get("reason")
                if not (isinstance(reason, str) and reason):
                    reason = notices.reset_by(client.who)
                self._worker_died(notices.ended_by_reset(reason), start_deferred=False)
            else:
                self.workers.replace()
            self.notice = None
            self._ready(client, ended=ended)
            self._start_deferred()
        elif kind == "shutdown":
            self.running = False

    def _execute(self, client, header, payload):
        cell = self.cell
        if cell is not None:
            if cell.client is None and self.deferred is None:
                self.deferred = (client, header, payload)  # runs once that cell has ended
            else:
                answer = protocol.busy(*self._owner())
                answer["id"] = header.get("id")
                self._send(client, answer)
            return
        notice = self.notice
        self.notice = None
        if header.get("reset"):
            self.workers.replace()
            notice = None
        self.cell = Cell(header, time.monotonic(), self.config["output_limit"], client)
        if notice:
            self.output.notice(notice)
        if self.workers.ensure() is None:
            self.output.event(protocol.done("killed", reason=notices.could_not_start(),
                                            state_lost=True))
            self.cell = None
            return
        forward = protocol.execute(stdin=bool(header.get("stdin")),
                                   cell_name=header.get("cell_name"),
                                   first_line=header.get("first_line"))
        self._to_worker(protocol.encode(forward, payload))

    def _start_deferred(self):
        """The cell that waited for a gone client's cell, now that it has ended."""
        if self.cell is None and self.deferred is not None:
            client, header, payload = self.deferred
            self.deferred = None
            if not client.gone:
                self._execute(client, header, payload)

    def _to_worker(self, data):
        w = self.worker
        try:
            w.sock.setblocking(True)
            w.sock.settimeout(5.0)  # a worker that reads nothing must not hang us
            w.sock.sendall(data)
        except OSError:
            if w.exited():
                self._worker_died()
            else:
                self._worker_died(notices.WORKER_STOPPED_READING)
        finally:
            if self.worker is w:
                w.sock.setblocking(False)

    # --- time limits and interrupts -------------------------------------------
    def _grace(self):
        cell = self.cell
        return float(cell.grace if cell.grace is not None else self.config["interrupt_grace"])

    def _escalate(self, why):
        """One step up the escalation ladder."""
        cell = self.cell
        if cell.why_interrupted is None:
            cell.why_interrupted = why
        if cell.stage == RUNNING:
            cell.stage = SIGINT_SENT
            self._sigint(group=True)  # the group, like Ctrl-C in a terminal
            cell.kill_at = time.monotonic() + self._grace()
            return
        if cell.stage == SIGINT_SENT:
            cell.stage = OTHERS_KILLED
            # A worker in os.system() ignores the SIGINT; its nudge goes before the
            # kill, so it acts as soon as the call returns (once the children are
            # gone the next line may have run). gVisor cannot tell: nudged anyway.
            in_system = probes.ignores_sigint(self.worker.pid, unknown=True)
            if in_system:
                self.worker.signal(interrupts.NUDGE, group=False)
            cell.children_killed = self.workers.kill_children()
            if cell.children_killed:  # the worker may just be waiting for them
                if not in_system:
                    self._sigint()
                cell.kill_at = time.monotonic() + self._grace()
                return
        self._worker_died(notices.did_not_stop(
            cell.timeout if cell.why_interrupted == "timeout" else None))

    def _sigint(self, group=False):
        """SIGINT to the worker (and its group); a nudge if it ignores SIGINT just now."""
        self.worker.signal(signal.SIGINT, group=group)
        if probes.ignores_sigint(self.worker.pid):  # inside os.system(), say
            self.worker.signal(interrupts.NUDGE, group=False)

    def _check_timers(self, now):
        cell = self.cell
        if cell is not None:
            if cell.stage == RUNNING and cell.deadline is not None and now >= cell.deadline:
                self._escalate("timeout")
            elif cell.kill_at is not None and now >= cell.kill_at:
                self._escalate(cell.why_interrupted)
        elif now - self.last_activity >= float(self.config["idle_timeout"]):
            self.running = False

    def _next_timeout(self, now):
        cell = self.cell
        times = []
        if cell is not None:
            if cell.kill_at is not None:
                times.append(cell.kill_at)
            elif cell.deadline is not None:
                times.append(cell.deadline)
            flush_at = self.output.flush_at()
            if flush_at is not None:
                times.append(flush_at)
        else:
            times.append(self.last_activity + float(self.config["idle_timeout"]))
        if not times:
            return None
        # A wait past what select() accepts (or an infinite limit) would raise
        # OverflowError and take the agent down: wake up daily instead.
        wait = min(times) - now
        return max(0.0, wait) if wait < MAX_WAIT else MAX_WAIT

    # --- main loop -------------------------------------------------------------
    def loop(self):
        while self.running:
            events = self.selector.select(self._next_timeout(time.monotonic()))
            # The worker's socket before its pipes: see streams.Channel on order.
            events.sort(key=lambda event: self.workers.owns_pipe(event[0].fd))
            for key, mask in events:
                if self.workers.owns_pipe(key.fd):
                    self.workers.read_pipe(key.fd)
                elif key.data is not None:
                    key.data(mask)
                if not self.running:
                    break
            now = time.monotonic()
            self._check_timers(now)
            flush_at = self.output.flush_at()
            if self.cell is not None and flush_at is not None and now >= flush_at:
                self.output.flush()
        self._shutdown()

    def farewell(self, text):
        for client in self.clients:
            self._send(client, protocol.notice(text))
        self._shutdown()

    def _shutdown(self):
        if self.worker is not None:
            self.worker.signal(signal.SIGKILL)
        self.clients.close_all()


def main(boot_header, listener, first_client, take_client):
    """Run the agent: ``listener`` is the relays' socket, ``first_client`` the
    (relay connection, stdin, stdout) of the client that booted us, and
    ``take_client(listener)`` the bootstrap's way of accepting the next."""
    refused = seccomp.block_io_uring()  # before the worker forks: every cell process inherits it
    supervisor = Supervisor(boot_header.get("config"), listener, first_client, take_client)
    supervisor.notice = supervisor.notice or refused
    try:
        supervisor.loop()
    except Exception as exc:  # a bug of ours: say what, to whoever is connected
        supervisor.farewell(notices.agent_failed(exc))
        raise
