"""The supervisor: the agent's long-lived process in the container.

It owns the channel to the notebook (the container's stdin and stdout), the
worker process that runs cells, and everything that has to happen even when
the cell's code misbehaves: time limits, interrupts escalating to a kill,
output caps and coalescing, reporting why a worker died, and stopping the
container after ``idle_timeout`` without any client request.

Single-threaded: one selector loop, so no request waits on a busy cell.

Escalation (a timeout, or the notebook's interrupt button; each further
interrupt request or each ``interrupt_grace`` moves one step on):

1. SIGINT to the worker's process group: KeyboardInterrupt in the cell's code
   (and in its child processes, as a local Ctrl-C would). Namespace kept.
   When the cell then ends, every other process still running is killed.
2. If it is still running: SIGKILL to every other process in the container
   (child processes, ``setsid`` daemons), then SIGINT to the worker again.
   Namespace kept if the worker now finishes the cell.
3. Still running: SIGKILL of the worker. A fresh worker replaces it, and the
   cell and the next one say that the state was lost.
"""

import collections
import os
import selectors
import signal
import socket
import time

from fiddledock_agent import limits
from fiddledock_agent import protocol
from fiddledock_agent import seccomp
from fiddledock_agent import worker as worker_mod

READ_SIZE = 256 * 1024
OUT_HIGH_WATER = 8 * 1024 * 1024  # stop reading the worker while this much waits
STREAM_DELAY = 0.004  # output waits at most this long to be coalesced into one frame
STREAM_CHUNK = 64 * 1024  # ... or until this much is pending
KILL_WAIT = 2.0  # how long to wait for killed processes to be gone
MAX_WAIT = 86400.0  # the longest single select() wait
DEFAULTS = {
    "idle_timeout": 3600.0,
    "interrupt_grace": 2.0,
    "output_limit": 4 * 1024 * 1024,
    "home": None,
}


_cgroup_fds = {}


def _cgroup_read(*paths):
    """The text of the first of paths that exists.

    Counters are read at every cell's start and end: the file stays open and
    is re-read with pread (one syscall, where open/read/close cost ~100 us
    under gVisor).
    """
    fd = _cgroup_fds.get(paths)
    if fd is None:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                break
            except OSError:
                continue
        else:
            fd = -1
        _cgroup_fds[paths] = fd
    if fd < 0:
        return ""
    try:
        return os.pread(fd, 65536, 0).decode("ascii", "replace")
    except OSError:
        return ""


def _cgroup_counter(key, *paths):
    for line in _cgroup_read(*paths).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


def oom_kill_count():
    """How many processes the kernel's OOM killer took in this container."""
    return _cgroup_counter("oom_kill", "/sys/fs/cgroup/memory.events",
                           "/sys/fs/cgroup/memory/memory.oom_control")


def pids_max_count():
    """How many times creating a process or thread failed at the pids limit."""
    return _cgroup_counter("max", "/sys/fs/cgroup/pids.events",
                           "/sys/fs/cgroup/pids/pids.events")


def pids_limit():
    text = _cgroup_read("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max").strip()
    return int(text) if text.isdigit() else None


def memory_limit():
    text = _cgroup_read("/sys/fs/cgroup/memory.max",
                        "/sys/fs/cgroup/memory/memory.limit_in_bytes").strip()
    if not text.isdigit() or int(text) >= 1 << 60:
        return None
    return int(text)


def memory_limit_text():
    limit = memory_limit()
    if limit is None:
        return "no limit"
    return "limit %d MiB" % (limit // (1024 * 1024))


def size_text(n):
    if n < 1024:
        return "%d bytes" % n
    if n < 1024 * 1024:
        return "%.1f KiB" % (n / 1024)
    return "%.1f MiB" % (n / (1024 * 1024))


def tmpfs_used(paths):
    """Bytes of files in the writable tmpfs mounts (they count as memory)."""
    total = 0
    for path in paths:
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        total += (st.f_blocks - st.f_bfree) * st.f_frsize
    return total


def describe_exit(status):
    """A one-line reason from a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "was killed by %s" % name
    if os.WIFEXITED(status):
        return "exited with status %d" % os.WEXITSTATUS(status)
    return "stopped (status %d)" % status


def ignores_sigint(pid):
    """Whether pid ignores SIGINT right now (os.system() does while it waits)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (OSError, ValueError, IndexError):
        pass
    return False


def _is_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return True  # gone already
    return stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"])


def other_pids(keep=()):
    """Live processes in the container but init, this process and keep."""
    mine = {1, os.getpid()} | set(keep)
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in mine and not _is_zombie(int(name)):
            pids.append(int(name))
    return pids


class WorkerProcess:
    """The supervisor's handle on one worker: its pid, socket and pipes."""

    def __init__(self):
        parent_sock, child_sock = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.oom_before = oom_kill_count()
        try:
            pid = os.fork()
        except OSError:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            parent_sock.close()
            child_sock.close()
            raise
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
        self.started = time.monotonic()
        self.status = None  # waitpid status once it has exited
        self.sock = parent_sock
        self.reader = protocol.FrameReader()
        self.pipes = {out_r: "stdout", err_r: "stderr"}

    def signal(self, sig, group=True):
        if group:
            try:
                os.killpg(self.pid, sig)
                return
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def exited(self):
        """Whether the worker has exited (reaps it without waiting)."""
        if self.status is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self.status = status
        return self.status is not None

    def reap(self, timeout=None):
        """The exit status; waits (at most timeout seconds) if needed, else None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.exited():
            if deadline is None:
                try:
                    _, self.status = os.waitpid(self.pid, 0)
                except ChildProcessError:
                    self.status = 0
                break
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)
        return self.status


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
        self.limit_told = False
        self.stage = 0  # escalation step reached (see the module docstring)
        self.kill_at = None  # when the current escalation step runs out
        self.why_interrupted = None  # "timeout" or "interrupt"
        self.children_killed = 0
        self.oom_before = oom_kill_count()
        self.pids_before = pids_max_count()


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
        self.tmpfs = ["/tmp"] + ([home] if home else [])
        # Sweeping every other process is only sane as a container's main
        # process (PID 1, or docker-init's child); never on a shared machine.
        self.contained = os.getpid() == 1 or os.getppid() == 1
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.in_fd, selectors.EVENT_READ, self._on_client)
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
        self.client_reader = protocol.FrameReader()
        self.out_queue = collections.deque()
        self.out_size = 0
        self.out_registered = False
        self.pending = []  # [name, bytearray]: stream output not yet framed
        self.pending_size = 0
        self.pending_since = None
        self.cell = None
        self.notice = None  # told to the next client that asks
        self.worker = None
        self.worker_reading = False
        self.last_activity = time.monotonic()
        self.running = True
        self._spawn_worker()

    # --- worker lifecycle ---------------------------------------------------
    def _spawn_worker(self):
        """Start a worker; retries while the pids or memory limit is still full."""
        deadline = time.monotonic() + KILL_WAIT
        while True:
            try:
                self.worker = WorkerProcess()
                break
            except OSError:
                if time.monotonic() >= deadline:
                    self.worker = None
                    return False
                self._reap_zombies()
                time.sleep(0.02)
        self._watch_worker(True)
        return True

    def _ensure_worker(self):
        """A live worker, or None if none can be started now."""
        if self.worker is None and not self._spawn_worker():
            return None
        return self.worker

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

    def _kill_others(self, keep=()):
        """SIGKILL every process in the container but init, us and keep.

        A child that called setsid() escapes the worker's process group; in a
        container this project owns, anything else running is such a leftover.
        Repeats until they are gone, so a fork bomb cannot outrun it.
        Returns how many processes were found.
        """
        if not self.contained:
            return 0
        found = set()
        deadline = time.monotonic() + KILL_WAIT
        while True:
            pids = other_pids(keep)
            if not pids or time.monotonic() >= deadline:
                return len(found)
            found.update(pids)
            if not keep:
                try:
                    os.kill(-1, signal.SIGKILL)  # all at once: fork cannot race it
                except OSError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if self.worker is None:
                self._reap_zombies()
            time.sleep(0.005)

    def _replace_worker(self, spawn=True):
        """A fresh worker (and namespace); the old one is killed and reaped.

        Returns the old worker and its exit status (None if there was none).
        """
        old = self.worker
        status = None
        if old is not None:
            old.signal(signal.SIGKILL)
            self._kill_others(keep=(old.pid,))
            self._drain_pipes()  # what its children wrote before they died
            self._drop_worker()
            status = old.reap()
        self._kill_others()
        self._reap_zombies()
        if spawn:
            self._spawn_worker()
        return old, status

    def _reap_zombies(self):
        """Children nobody waits for: killed workers, and orphans when we are PID 1.

        The current worker's exit status is kept for ``WorkerProcess.exited``.
        """
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.worker is not None and pid == self.worker.pid:
                self.worker.status = status

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

    def _notice(self, text):
        self._flush_streams()
        self._to_cell({"type": "notice", "text": text})

    def _emit_stream(self, name, data):
        cell = self.cell
        if cell is None:
            return  # output of a background process between cells
        room = cell.output_limit - cell.sent
        if len(data) > room:
            cell.dropped += len(data) - room
            data = data[:room]
        if data:
            cell.sent += len(data)
            if self.pending and self.pending[-1][0] == name:
                self.pending[-1][1] += data
            else:
                self.pending.append([name, bytearray(data)])
            self.pending_size += len(data)
            if self.pending_since is None:
                self.pending_since = time.monotonic()
            if self.pending_size >= STREAM_CHUNK:
                self._flush_streams()
        if cell.dropped and not cell.limit_told:
            cell.limit_told = True
            self._notice("output limit of %s reached: further output of this cell is "
                         "dropped (DockerRun.output_limit); the code keeps running"
                         % size_text(cell.output_limit))

    def _flush_streams(self):
        pending, self.pending = self.pending, []
        self.pending_size = 0
        self.pending_since = None
        for name, data in pending:
            self._to_cell({"type": "stream", "name": name}, bytes(data))

    def _drain_pipes(self):
        """What child processes wrote so far, before a later event.

        One read per pipe takes all a pipe holds (64 KiB); reading on could
        chase a writer that never stops.
        """
        if self.worker is None:
            return
        for fd, name in list(self.worker.pipes.items()):
            try:
                data = os.read(fd, READ_SIZE)
            except (BlockingIOError, OSError):
                continue
            if data:
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
            self._worker_gone()
            return
        self._feed_worker(w, data)

    def _feed_worker(self, w, data):
        w.reader.feed(data)
        try:
            frames = w.reader.frames()
        except protocol.ProtocolError:
            self._worker_died("wrote garbage into its channel to the agent, so it was killed")
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
            self._emit_stream(header.get("name", "stdout"), payload)
            return
        if self.cell is None:
            return
        self._flush_streams()
        if kind in ("display", "result", "input_request"):
            self._to_cell(header, payload)
        elif kind == "done":
            self._finish_cell(header)

    def _cell_notices(self, worker_died=False):
        """What the user should know about the cell that is ending."""
        cell = self.cell
        notices = []
        if cell.dropped:
            notices.append("output truncated: %s (%d bytes) dropped after the %s limit "
                           "(DockerRun.output_limit)"
                           % (size_text(cell.dropped), cell.dropped,
                              size_text(cell.output_limit)))
        if pids_max_count() > cell.pids_before:
            limit = pids_limit()
            notices.append("this cell hit the process limit%s: creating a process or thread "
                           "failed; `%%dockerrun reset` ends all its processes"
                           % (" (%d)" % limit if limit else ""))
        if not worker_died and oom_kill_count() > cell.oom_before:
            notices.append("out of memory (%s): the kernel killed a process of this cell"
                           % memory_limit_text())
        if not worker_died:  # else the worker's reason names them
            notices.extend(limits.full_folders(self.tmpfs, oom_kill_count() > cell.oom_before))
        return notices

    def _finish_cell(self, header):
        cell = self.cell
        if cell.why_interrupted and not cell.children_killed and self.worker is not None:
            # Ctrl-C ends the whole job: what outlived the SIGINT (a fork bomb's
            # children forked after it, say) would go on burning the CPU.
            cell.children_killed = self._kill_others(keep=(self.worker.pid,))
        self._flush_streams()
        for text in self._cell_notices():
            self._to_cell({"type": "notice", "text": text})
        status = header.get("status")
        extra = ("; its child processes were killed" if cell.children_killed else "")
        if cell.why_interrupted == "timeout":
            what = "timed out after %g s" % cell.timeout
            if status == "interrupted":
                header["status"] = "timeout"
                header["reason"] = "%s: KeyboardInterrupt raised%s; namespace kept" % (what, extra)
            else:
                self._to_cell({"type": "notice", "text":
                               "%s: KeyboardInterrupt was raised in the code%s" % (what, extra)})
        elif cell.why_interrupted and cell.children_killed:
            self._to_cell({"type": "notice", "text":
                           "interrupted: its child processes did not stop, so they were killed; "
                           "namespace kept"})
        self._to_cell(header)
        self.cell = None
        self.last_activity = time.monotonic()

    def _worker_gone(self):
        """EOF on the worker's socket: it exited, or closed the socket itself."""
        w = self.worker
        status = w.reap(timeout=0.5)
        if status is None:
            self._worker_died("closed its channel to the agent, so it was killed")
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
            self._reap_zombies()
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

    def _worker_died(self, reason=None):
        """The worker is gone (or is to be killed): report, then start anew.

        One that died by itself between cells right after it started is not
        replaced until a client asks (memory full of files would make a loop).
        """
        w = self.worker
        soon = (self.cell is None and w is not None
                and time.monotonic() - w.started < 1.0)
        old, status = self._replace_worker(spawn=not soon)
        if reason is None:
            reason = describe_exit(status or 0)
            if (old is not None and os.WIFSIGNALED(status or 0)
                    and os.WTERMSIG(status) == signal.SIGKILL
                    and oom_kill_count() > old.oom_before):
                reason = "was killed: out of memory (%s)" % memory_limit_text()
                used = tmpfs_used(self.tmpfs)
                if used >= 1024 * 1024:
                    reason += "; files in /tmp and the home folder take %s of it" % size_text(used)
        reason = "; ".join([reason] + limits.full_folders(self.tmpfs, crowded=True))
        if self.cell is not None:
            self._flush_streams()
            for text in self._cell_notices(worker_died=True):
                self._to_cell({"type": "notice", "text": text})
            self._to_cell({"type": "done", "status": "killed", "reason": reason,
                           "cause": self.cell.why_interrupted, "state_lost": True})
            self.cell = None
            self.notice = ("this cell runs in a fresh worker: variables and imports of earlier "
                           "cells were lost (a previous cell %s)" % reason)
        else:
            self.notice = ("this cell runs in a fresh worker: variables and imports of earlier "
                           "cells were lost (between cells the worker %s)" % reason)
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
            if not (header.get("type") == "hello" and header.get("passive")):
                self.last_activity = time.monotonic()  # a status probe is not use
            self._on_request(header, payload)

    def _ready(self, to):
        self._ensure_worker()
        self._send({"type": "ready", "to": to, "version": protocol.VERSION,
                    "busy": self.cell is not None,
                    "worker": self.worker.pid if self.worker else None,
                    "notice": self.notice})
        self.notice = None

    def _on_request(self, header, payload):
        kind = header.get("type")
        sender = header.get("from")
        if kind == "hello":
            self._ready(sender)
        elif kind == "execute":
            self._execute(header, payload)
        elif kind == "interrupt":
            if self.cell is not None and sender == self.cell.client:
                if header.get("kill") or self.cell.stage == 0:
                    self._escalate("interrupt")
                else:  # pressed again: another KeyboardInterrupt, as locally
                    self._sigint(group=True)
        elif kind == "input_reply":
            # Only the client whose cell asked may answer it.
            if self.cell is not None and self.worker is not None and sender == self.cell.client:
                reply = {"type": "input_reply", "value": header.get("value"),
                         "error": header.get("error")}
                self._to_worker(protocol.encode(reply))
        elif kind == "reset":
            if self.cell is not None:
                self._send({"type": "busy", "to": sender})
                return
            self._replace_worker()
            self.notice = None
            self._ready(sender)
        elif kind == "shutdown":
            self.running = False

    def _execute(self, header, payload):
        sender = header.get("from")
        if self.cell is not None:
            self._send({"type": "busy", "to": sender, "id": header.get("id")})
            return
        notice = self.notice
        self.notice = None
        if header.get("reset"):
            self._replace_worker()
            notice = None
        self.cell = Cell(header, time.monotonic(), self.config["output_limit"])
        if notice:
            self._to_cell({"type": "notice", "text": notice})
        if self._ensure_worker() is None:
            self._to_cell({"type": "done", "status": "killed", "state_lost": True,
                           "reason": "could not start: the instance's memory or "
                                     "process limit is full; `%dockerrun restart` helps"})
            self.cell = None
            return
        fwd = {"type": "execute", "stdin": bool(header.get("stdin"))}
        self._to_worker(protocol.encode(fwd, payload))

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
                self._worker_died("stopped reading its channel to the agent, so it was killed")
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
        if cell.stage == 0:
            cell.stage = 1
            self._sigint(group=True)  # the group, like Ctrl-C in a terminal
            cell.kill_at = time.monotonic() + self._grace()
            return
        if cell.stage == 1:
            cell.stage = 2
            cell.children_killed = self._kill_others(keep=(self.worker.pid,))
            if cell.children_killed:  # the worker may just be waiting for them
                self._sigint()
                cell.kill_at = time.monotonic() + self._grace()
                return
        if cell.why_interrupted == "timeout":
            reason = "timed out after %g s and did not stop on KeyboardInterrupt" % cell.timeout
        else:
            reason = "interrupted and did not stop on KeyboardInterrupt"
        self._worker_died(reason + ", so it was killed")

    def _sigint(self, group=False):
        """SIGINT to the worker (and its group); a nudge if it ignores SIGINT just now."""
        self.worker.signal(signal.SIGINT, group=group)
        if ignores_sigint(self.worker.pid):  # inside os.system(), say
            self.worker.signal(worker_mod.NUDGE, group=False)

    def _check_timers(self, now):
        cell = self.cell
        if cell is not None:
            if cell.stage == 0 and cell.deadline is not None and now >= cell.deadline:
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
            if self.pending_since is not None:
                times.append(self.pending_since + STREAM_DELAY)
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
            # The worker's socket before its pipes: see worker.Channel on order.
            events.sort(key=lambda event: self.worker is not None
                        and event[0].fd in self.worker.pipes)
            for key, mask in events:
                if self.worker is not None and key.fd in self.worker.pipes:
                    self._read_pipe(key.fd)
                elif key.data is not None:
                    key.data(mask)
                if not self.running:
                    break
            now = time.monotonic()
            self._check_timers(now)
            if (self.cell is not None and self.pending_since is not None
                    and now - self.pending_since >= STREAM_DELAY):
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
    refused = seccomp.block_io_uring()  # before the worker forks: every cell process inherits it
    supervisor = Supervisor(boot_header.get("config"))
    supervisor.notice = supervisor.notice or refused
    supervisor.loop()
