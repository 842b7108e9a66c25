"""The supervisor: the agent's long-lived process in the container.

It owns the channel to the notebook (the container's stdin and stdout), the
worker process that runs cells, and everything that has to happen even when
the cell's code misbehaves: time limits, interrupts escalating to a kill,
output caps and coalescing, reporting why a worker died, and stopping the
container after ``idle_timeout`` without any client request.

Single-threaded: one selector loop, so no request waits on a busy cell.
"""

import collections
import os
import selectors
import signal
import socket
import time

from fiddledock_agent import protocol
from fiddledock_agent import worker as worker_mod

READ_SIZE = 256 * 1024
OUT_HIGH_WATER = 8 * 1024 * 1024  # stop reading the worker while this much waits
DEFAULTS = {
    "idle_timeout": 3600.0,
    "interrupt_grace": 2.0,
    "output_limit": 4 * 1024 * 1024,
    "home": None,
}


def _cgroup_read(*paths):
    for path in paths:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            continue
    return ""


def oom_kill_count():
    """How many processes the kernel's OOM killer took in this container."""
    text = _cgroup_read("/sys/fs/cgroup/memory.events",
                        "/sys/fs/cgroup/memory/memory.oom_control")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill":
            return int(parts[1])
    return 0


def memory_limit_text():
    text = _cgroup_read("/sys/fs/cgroup/memory.max",
                        "/sys/fs/cgroup/memory/memory.limit_in_bytes").strip()
    if not text.isdigit() or int(text) >= 1 << 60:
        return "no limit"
    return "limit %d MiB" % (int(text) // (1024 * 1024))


def describe_exit(status):
    """A one-line reason from a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "killed by %s" % name
    if os.WIFEXITED(status):
        return "exited with status %d" % os.WEXITSTATUS(status)
    return "stopped (status %d)" % status


class WorkerProcess:
    """The supervisor's handle on one worker: its pid, socket and pipes."""

    def __init__(self):
        parent_sock, child_sock = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.oom_before = oom_kill_count()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                parent_sock.close()
                worker_mod.run(child_sock, out_w, err_w)
            finally:
                os._exit(0)
        child_sock.close()
        os.close(out_w)
        os.close(err_w)
        parent_sock.setblocking(False)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.pid = pid
        self.sock = parent_sock
        self.reader = protocol.FrameReader()
        self.pipes = {out_r: "stdout", err_r: "stderr"}

    def signal(self, sig):
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def reap(self):
        """Wait for the worker; its exit status."""
        try:
            _, status = os.waitpid(self.pid, 0)
            return status
        except ChildProcessError:
            return 0


class Cell:
    """The cell being run: who asked, its limits and what it has sent."""

    def __init__(self, header, now, output_limit):
        self.id = header.get("id")
        self.client = header.get("from")
        timeout = float(header.get("timeout") or 0)
        self.deadline = now + timeout if timeout > 0 else None
        self.timeout = timeout
        self.output_limit = int(header.get("output_limit") or output_limit)
        self.grace = header.get("interrupt_grace")
        self.sent = 0
        self.dropped = 0
        self.kill_at = None  # when an unanswered interrupt becomes a kill
        self.why_interrupted = None


class Supervisor:
    def __init__(self, config):
        self.config = dict(DEFAULTS)
        self.config.update({k: v for k, v in (config or {}).items() if v is not None})
        # The channel moves off fds 0/1 so nothing else can write into it.
        self.in_fd = os.dup(0)
        self.out_fd = os.dup(1)
        null_r = os.open(os.devnull, os.O_RDONLY)
        null_w = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null_r, 0)
        os.dup2(null_w, 1)
        os.close(null_r)
        os.close(null_w)
        os.set_blocking(self.in_fd, False)
        os.set_blocking(self.out_fd, False)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        home = self.config.get("home") or os.environ.get("HOME")
        if home and os.path.isdir(home):
            os.chdir(home)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.in_fd, selectors.EVENT_READ, self._on_client)
        self.client_reader = protocol.FrameReader()
        self.out_queue = collections.deque()
        self.out_size = 0
        self.out_registered = False
        self.pending = []  # [name, bytearray]: stream output not yet framed
        self.cell = None
        self.notice = None  # told to the next client that asks
        self.worker = None
        self.worker_reading = False
        self.last_activity = time.monotonic()
        self.running = True
        self._spawn_worker()

    # --- worker lifecycle ---------------------------------------------------
    def _spawn_worker(self):
        self.worker = WorkerProcess()
        self._watch_worker(True)

    def _watch_worker(self, on):
        """Read from the worker or not (backpressure when the client is slow)."""
        w = self.worker
        if w is None or on == self.worker_reading:
            return
        if on:
            self.selector.register(w.sock, selectors.EVENT_READ, self._on_worker_sock)
            for fd in w.pipes:
                self.selector.register(fd, selectors.EVENT_READ, None)
        else:
            for fd in [w.sock] + list(w.pipes):
                try:
                    self.selector.unregister(fd)
                except (KeyError, ValueError):
                    pass
        self.worker_reading = on

    def _drop_worker(self):
        """Forget the current worker: close its fds, return it for reaping."""
        w = self.worker
        self._watch_worker(False)
        self.worker = None
        w.sock.close()
        for fd in w.pipes:
            os.close(fd)
        return w

    def _kill_strays(self, keep=()):
        """SIGKILL every process in the container but init and us.

        A child that called setsid() escapes the worker's process group; in a
        container this project owns, anything else running is such a leftover.
        """
        mine = {1, os.getpid()} | set(keep)
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) not in mine:
                try:
                    os.kill(int(name), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _replace_worker(self, kill=True):
        """A fresh worker (and namespace); the old one is killed and reaped."""
        old = self.worker
        if old is not None:
            self._drain_pipes()
            self._drop_worker()
            if kill:
                old.signal(signal.SIGKILL)
            status = old.reap()
        else:
            status = 0
        self._kill_strays()
        self._reap_zombies()
        self._spawn_worker()
        return old, status

    def _reap_zombies(self):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # --- output to the client -----------------------------------------------
    def _send(self, header, payload=b""):
        data = protocol.encode(header, payload)
        self.out_queue.append(data)
        self.out_size += len(data)
        self._write_out()

    def _write_out(self):
        while self.out_queue:
            data = self.out_queue[0]
            try:
                n = os.write(self.out_fd, data)
            except BlockingIOError:
                break
            except OSError:  # nobody can read us any more
                self.running = False
                return
            self.out_size -= n
            if n < len(data):
                self.out_queue[0] = data[n:]
                break
            self.out_queue.popleft()
        want = bool(self.out_queue)
        if want != self.out_registered:
            if want:
                self.selector.register(self.out_fd, selectors.EVENT_WRITE, self._on_out_writable)
            else:
                self.selector.unregister(self.out_fd)
            self.out_registered = want
        self._watch_worker(self.out_size < OUT_HIGH_WATER)

    def _on_out_writable(self, _mask):
        self._write_out()

    def _to_cell(self, header, payload=b""):
        """An event for the client whose cell is running."""
        header["to"] = self.cell.client
        header["id"] = self.cell.id
        self._send(header, payload)

    def _emit_stream(self, name, data):
        cell = self.cell
        if cell is None:
            return  # output of a background process between cells
        room = cell.output_limit - cell.sent
        if room <= 0:
            cell.dropped += len(data)
            return
        if len(data) > room:
            cell.dropped += len(data) - room
            data = data[:room]
        cell.sent += len(data)
        if self.pending and self.pending[-1][0] == name:
            self.pending[-1][1] += data
        else:
            self.pending.append([name, bytearray(data)])

    def _flush_streams(self):
        pending, self.pending = self.pending, []
        for name, data in pending:
            self._to_cell({"type": "stream", "name": name}, bytes(data))

    def _drain_pipes(self):
        """Everything child processes wrote so far, before a later event."""
        if self.worker is None:
            return
        for fd, name in self.worker.pipes.items():
            while True:
                try:
                    data = os.read(fd, READ_SIZE)
                except (BlockingIOError, OSError):
                    break
                if not data:
                    break
                self._emit_stream(name, data)

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
            self._worker_died()
            return
        w.reader.feed(data)
        for header, payload in w.reader.frames():
            self._on_worker_frame(header, payload)
            if self.worker is not w:
                return

    def _on_worker_frame(self, header, payload):
        kind = header.get("type")
        self._drain_pipes()
        if kind == "stream":
            self._emit_stream(header.get("name", "stdout"), payload)
            return
        if self.cell is None:
            return
        self._flush_streams()
        if kind in ("display", "result", "input_request"):
            self._to_cell(header, payload)
        elif kind == "done":
            self._finish_cell(header)

    def _finish_cell(self, header):
        cell = self.cell
        self._flush_streams()
        notices = []
        if cell.dropped:
            notices.append("output truncated: %d bytes dropped after the %d byte limit"
                           % (cell.dropped, cell.output_limit))
        if cell.why_interrupted == "timeout" and header.get("status") == "interrupted":
            notices.append("timed out after %g s: KeyboardInterrupt raised; namespace kept"
                           % cell.timeout)
        for text in notices:
            self._to_cell({"type": "notice", "text": text})
        if cell.why_interrupted == "timeout" and header.get("status") == "interrupted":
            header["status"] = "timeout"
        self._to_cell(header)
        self.cell = None
        self.last_activity = time.monotonic()

    def _worker_died(self, reason=None):
        """The worker is gone (or we killed it): report, then start anew."""
        old, status = self._replace_worker(kill=True)
        if reason is None:
            reason = describe_exit(status)
            if (old is not None and os.WIFSIGNALED(status)
                    and os.WTERMSIG(status) == signal.SIGKILL
                    and oom_kill_count() > old.oom_before):
                reason = "killed: out of memory (%s)" % memory_limit_text()
        text = "the worker was %s; a new one was started and the previous state was lost" % reason
        if self.cell is not None:
            self._flush_streams()
            self._to_cell({"type": "done", "status": "killed", "reason": reason,
                           "notice": text})
            self.cell = None
        else:
            self.notice = text
        self.last_activity = time.monotonic()

    # --- requests from clients -------------------------------------------------
    def _on_client(self, _mask):
        try:
            data = os.read(self.in_fd, READ_SIZE)
        except BlockingIOError:
            return
        if not data:  # stdin closed: nobody can reach us any more
            self.running = False
            return
        self.client_reader.feed(data)
        for header, payload in self.client_reader.frames():
            self.last_activity = time.monotonic()
            self._on_request(header, payload)

    def _ready(self, to):
        self._send({"type": "ready", "to": to, "version": protocol.VERSION,
                    "busy": self.cell is not None, "worker": self.worker.pid,
                    "notice": self.notice})
        self.notice = None

    def _on_request(self, header, payload):
        kind = header.get("type")
        sender = header.get("from")
        if kind == "hello":
            self._ready(sender)
        elif kind == "execute":
            if self.cell is not None:
                self._send({"type": "busy", "to": sender, "id": header.get("id")})
                return
            notice = self.notice
            self.notice = None
            if header.get("reset"):
                self._replace_worker()
            self.cell = Cell(header, time.monotonic(), self.config["output_limit"])
            if notice:
                self._to_cell({"type": "notice", "text": notice})
            fwd = {"type": "execute", "stdin": bool(header.get("stdin"))}
            try:
                self.worker.sock.setblocking(True)
                self.worker.sock.sendall(protocol.encode(fwd, payload))
            except OSError:
                self._worker_died()
            finally:
                if self.worker is not None:
                    self.worker.sock.setblocking(False)
        elif kind == "interrupt":
            if self.cell is not None and (sender == self.cell.client or header.get("force")):
                if header.get("kill"):
                    self._kill_cell("interrupted twice")
                else:
                    self._interrupt_cell("interrupt")
        elif kind == "input_reply":
            if self.cell is not None and self.worker is not None:
                reply = {"type": "input_reply", "value": header.get("value"),
                         "error": header.get("error")}
                self.worker.sock.setblocking(True)
                try:
                    self.worker.sock.sendall(protocol.encode(reply))
                finally:
                    self.worker.sock.setblocking(False)
        elif kind == "reset":
            if self.cell is not None:
                self._send({"type": "busy", "to": sender})
                return
            self._replace_worker()
            self.notice = None
            self._ready(sender)
        elif kind == "shutdown":
            self.running = False

    # --- time limits -------------------------------------------------------
    def _interrupt_cell(self, why):
        cell = self.cell
        if cell.why_interrupted is None:
            cell.why_interrupted = why
        # Only the worker itself: its children get no KeyboardInterrupt locally either.
        try:
            os.kill(self.worker.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        if cell.kill_at is None:
            grace = cell.grace if cell.grace is not None else self.config["interrupt_grace"]
            cell.kill_at = time.monotonic() + float(grace)

    def _kill_cell(self, why):
        if why == "timeout" or self.cell.why_interrupted == "timeout":
            reason = ("timed out after %g s and ignored KeyboardInterrupt, so it was killed"
                      % self.cell.timeout)
        else:
            reason = "%s, so it was killed" % why
        self._worker_died(reason)

    def _check_timers(self, now):
        cell = self.cell
        if cell is not None:
            if cell.deadline is not None and now >= cell.deadline and cell.kill_at is None:
                self._interrupt_cell("timeout")
            elif cell.kill_at is not None and now >= cell.kill_at:
                self._kill_cell("it did not stop after KeyboardInterrupt")
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
        else:
            times.append(self.last_activity + float(self.config["idle_timeout"]))
        if not times:
            return None
        return max(0.0, min(times) - now)

    # --- main loop -------------------------------------------------------------
    def loop(self):
        while self.running:
            events = self.selector.select(self._next_timeout(time.monotonic()))
            for key, mask in events:
                if self.worker is not None and key.fd in self.worker.pipes:
                    self._read_pipe(key.fd)
                else:
                    key.data(mask)
                if not self.running:
                    break
            self._check_timers(time.monotonic())
            if self.cell is not None:
                self._flush_streams()
        self._shutdown()

    def _read_pipe(self, fd):
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if data:
            self._emit_stream(self.worker.pipes[fd], data)
        else:  # every writer is gone; the socket tells whether the worker is
            self.selector.unregister(fd)
            del self.worker.pipes[fd]
            os.close(fd)

    def _shutdown(self):
        if self.worker is not None:
            self.worker.signal(signal.SIGKILL)
        os.set_blocking(self.out_fd, True)
        while self.out_queue:
            try:
                os.write(self.out_fd, self.out_queue.popleft())
            except OSError:
                break


def main(boot_header):
    Supervisor(boot_header.get("config")).loop()
