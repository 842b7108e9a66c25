"""The supervisor: the agent's long-lived process in the container.

It owns the channel to the notebook (the container's stdin and stdout), the
worker process that runs cells, and everything that has to happen even when
the cell's code misbehaves: time limits, interrupts escalating to a kill,
output caps and coalescing, reporting why a worker died, and stopping the
container after ``idle_timeout`` without any client request.

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
import struct
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
MAX_CLIENTS = 64  # connected at once; more are turned away
CLIENT_QUEUE_MAX = 4 * 1024 * 1024  # events a client that runs no cell may leave unread
SANDBOX_UID = 1000  # who cells run as when the agent runs as root
DEFAULTS = {
    "idle_timeout": 3600.0,
    "interrupt_grace": 2.0,
    "output_limit": 4 * 1024 * 1024,
    "home": None,
    "uid": SANDBOX_UID,
    "gid": SANDBOX_UID,
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


def _uid_of(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def other_pids(keep=(), uid=None):
    """Live processes in the container but init, this process and keep.

    With ``uid``, only that user's: the cell's processes, never a relay or a
    file helper (they run as the agent's uid).
    """
    mine = {1, os.getpid()} | set(keep)
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in mine and not _is_zombie(int(name)):
            if uid is None or _uid_of(int(name)) == uid:
                pids.append(int(name))
    return pids


def kill_all_of(uid):
    """SIGKILL every process of uid at once (kill(-1) from a child that becomes uid).

    One kill(-1) cannot be outrun by fork, unlike killing pid by pid.
    """
    try:
        pid = os.fork()
    except OSError:
        return
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def peer_pid(sock):
    """The pid at the other end of a unix socket (a relay), or 0."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return struct.unpack("3i", creds)[0]


class WorkerProcess:
    """The supervisor's handle on one worker: its pid, socket and pipes."""

    def __init__(self, identity):
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
                worker_mod.run(child_sock, out_w, err_w, identity)
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

    def __init__(self, header, now, output_limit, client):
        self.id = header.get("id")
        self.client = client  # a Client; None once it is gone
        self.started = now
        timeout = max(0.0, float(_number(header.get("timeout"))))
        self.deadline = now + timeout if timeout > 0 else None
        self.timeout = timeout
        self.output_limit = int(max(0, _number(header.get("output_limit")))) or output_limit
        self.owner = client.who
        grace = _number(header.get("interrupt_grace"), None)
        self.grace = None if grace is None else max(0.0, grace)
        self.sent = 0
        self.dropped = 0
        self.limit_told = False
        self.stage = 0  # escalation step reached (see the module docstring)
        self.kill_at = None  # when the current escalation step runs out
        self.why_interrupted = None  # "timeout" or "interrupt"
        self.children_killed = 0
        self.oom_before = oom_kill_count()
        self.pids_before = pids_max_count()


class Client:
    """One client's channel: the stdin and stdout of its exec'd relay.

    ``conn`` is the relay's own connection: the relay (and so the engine's
    exec, and its streams) lives until it is closed.
    """

    def __init__(self, number, conn, in_fd, out_fd):
        self.number = number
        self.conn = conn
        self.relay = peer_pid(conn)
        self.in_fd = in_fd
        self.out_fd = out_fd
        os.set_blocking(in_fd, False)
        os.set_blocking(out_fd, False)
        self.reader = protocol.FrameReader(max_payload=protocol.MAX_REQUEST_PAYLOAD)
        self.queue = collections.deque()
        self.queued = 0
        self.writing = False  # registered for EVENT_WRITE
        self.gone = False
        self.who = "client %d" % number

    def close(self):
        self.gone = True
        for fd in (self.in_fd, self.out_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.conn.close()
        # The relay waits (as `sleep`) until we let go: end it, and with it
        # the engine's exec. Only if that pid is still the relay (root's).
        if self.relay and _uid_of(self.relay) == os.getuid():
            try:
                os.kill(self.relay, signal.SIGKILL)
            except OSError:
                pass


def _number(value, default=0.0):
    """A finite number from a request field, else default (requests are checked, never trusted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if value != value or value in (float("inf"), float("-inf")):
        return default
    return value


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
        self.identity = None
        if os.getuid() == 0:
            self.identity = (int(self.config["uid"]), int(self.config["gid"]))
        self.home = home
        # Sweeping every other process is only sane as a container's main
        # process (PID 1, or docker-init's child); never on a shared machine.
        self.contained = os.getpid() == 1 or os.getppid() == 1
        self.selector = selectors.DefaultSelector()
        self.listener = listener
        self.take_client = take_client
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, self._on_accept)
        self.clients = {}  # in_fd -> Client
        self.client_count = 0
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
        self.pending = []  # [name, bytearray]: stream output not yet framed
        self.pending_size = 0
        self.pending_since = None
        self.cell = None
        self.deferred = None  # (client, header, payload): waits for a gone client's cell
        self.notice = None  # told to the next client that asks
        self.worker = None
        self.worker_reading = False
        self.last_activity = time.monotonic()
        self.running = True
        self._spawn_worker()
        self._add_client(*first_client)

    # --- worker lifecycle ---------------------------------------------------
    def _spawn_worker(self):
        """Start a worker; retries while the pids or memory limit is still full."""
        deadline = time.monotonic() + KILL_WAIT
        while True:
            try:
                self.worker = WorkerProcess((self.identity, self.home))
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
        uid = self.identity[0] if self.identity else None
        deadline = time.monotonic() + KILL_WAIT
        while True:
            pids = other_pids(keep, uid)
            if not pids or time.monotonic() >= deadline:
                return len(found)
            found.update(pids)
            if not keep:  # all at once: fork cannot race it
                if uid is not None:
                    kill_all_of(uid)
                else:
                    try:
                        os.kill(-1, signal.SIGKILL)
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
    def _send(self, client, header, payload=b""):
        if client is None or client.gone:
            return
        data = protocol.encode(header, payload)
        client.queue.append(data)
        client.queued += len(data)
        cell = self.cell
        if (cell is None or cell.client is not client) and client.queued > CLIENT_QUEUE_MAX:
            self._drop_client(client)  # answers it does not read: not worth our memory
            return
        self._write_out(client)

    def _write_out(self, client):
        while client.queue:
            data = client.queue[0]
            try:
                n = os.write(client.out_fd, data)
            except BlockingIOError:
                break
            except OSError:  # its stream is gone
                self._drop_client(client)
                return
            client.queued -= n
            if n < len(data):
                client.queue[0] = data[n:]
                break
            client.queue.popleft()
        cell_client = self.cell.client if self.cell is not None else None
        want = bool(client.queue)
        if want != client.writing:
            if want:
                self.selector.register(client.out_fd, selectors.EVENT_WRITE,
                                       lambda mask, c=client: self._write_out(c))
            else:
                self.selector.unregister(client.out_fd)
            client.writing = want
        if client is cell_client:  # backpressure: the cell waits for its reader
            self._watch_worker(client.queued < OUT_HIGH_WATER)

    def _to_cell(self, header, payload=b""):
        """An event for the client whose cell is running (dropped if it is gone)."""
        header["id"] = self.cell.id
        self._send(self.cell.client, header, payload)

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
        if cell.dropped and not cell.limit_told:  # else told when it happened
            notices.append("output truncated: %s (%d bytes) dropped after the %s limit "
                           "(DockerRun.output_limit)"
                           % (size_text(cell.dropped), cell.dropped,
                              size_text(cell.output_limit)))
        if pids_max_count() > cell.pids_before:
            limit = pids_limit()
            # Processes ended with the cell need no advice; others may still run.
            notices.append("this cell hit the process limit%s: it could not start more "
                           "processes or threads%s" % (" (%d)" % limit if limit else "",
                                                       "" if cell.children_killed else
                                                       "; `%dockerrun reset` ends all of them"))
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
        extra = ("; the processes it started were ended" if cell.children_killed else "")
        if cell.why_interrupted == "timeout":
            what = "timed out after %g s" % cell.timeout
            if status == "interrupted":
                header["status"] = "timeout"
                header["reason"] = "%s and was stopped%s; its variables are kept" % (what, extra)
            else:
                self._to_cell({"type": "notice", "text":
                               "%s: KeyboardInterrupt was raised in the code%s" % (what, extra)})
        elif cell.why_interrupted and cell.children_killed:
            self._to_cell({"type": "notice", "text":
                           "interrupted: the processes it started did not stop, so they were "
                           "ended; its variables are kept"})
        self._to_cell(header)
        self.cell = None
        self.last_activity = time.monotonic()
        self._start_deferred()

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

    def _worker_died(self, reason=None, start_deferred=True):
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
        if start_deferred:
            self._start_deferred()

    # --- clients ---------------------------------------------------------------
    def _on_accept(self, _mask):
        """A relay connects: take the exec's stdin/stdout it hands over."""
        client = self.take_client(self.listener)  # bootstrap.take_client: checks and all
        if client is None:
            return
        conn, fds = client
        if len(self.clients) >= MAX_CLIENTS:
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        conn.setblocking(False)
        self._add_client(conn, *fds)

    def _add_client(self, conn, in_fd, out_fd):
        self.client_count += 1
        client = Client(self.client_count, conn, in_fd, out_fd)
        self.clients[in_fd] = client
        self.selector.register(in_fd, selectors.EVENT_READ,
                               lambda mask, c=client: self._on_client(c))
        return client

    def _drop_client(self, client):
        """A client left (or misbehaved): forget it; a cell of its own is interrupted."""
        if client.gone:
            return
        for fd in (client.in_fd, client.out_fd):
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        self.clients.pop(client.in_fd, None)
        client.close()
        if self.deferred is not None and self.deferred[0] is client:
            self.deferred = None
        cell = self.cell
        if cell is not None and cell.client is client:
            cell.client = None  # its events have nowhere to go
            if cell.stage == 0:  # as a local kernel's death would end its code
                self._escalate("client_gone")

    def _on_client(self, client):
        try:
            data = os.read(client.in_fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # its kernel is gone, or gave up on us
            self._drop_client(client)
            return
        client.reader.feed(data)
        try:
            frames = client.reader.frames()
        except protocol.ProtocolError as exc:
            self._send(client, {"type": "notice", "text": "the agent dropped this connection: "
                                "it sent a malformed frame (%s)" % exc})
            self._drop_client(client)
            return
        for header, payload in frames:
            if client.gone:
                return
            if not (header.get("type") == "hello" and header.get("passive")):
                self.last_activity = time.monotonic()  # a status probe is not use
            try:
                self._on_request(client, header, payload)
            except Exception as exc:  # a request we cannot make sense of: that client goes
                self._send(client, {"type": "notice", "text": "the agent dropped this "
                                    "connection: a request failed (%s: %s)"
                                    % (type(exc).__name__, str(exc)[:200])})
                self._drop_client(client)
                return

    def _ready(self, client, **extra):
        self._ensure_worker()
        header = {"type": "ready", "version": protocol.VERSION,
                  "busy": self.cell is not None,
                  "worker": self.worker.pid if self.worker else None,
                  "notice": self.notice}
        header.update(extra)
        self._send(client, header)
        self.notice = None

    def _owner(self):
        """Whose cell is running, and for how long (for busy / interrupted answers)."""
        cell = self.cell
        return {"owner": cell.owner, "seconds": round(time.monotonic() - cell.started, 1)}

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
                    self._send(client, {"type": "interrupted", "owner": None})
                    return
                self._send(client, dict(self._owner(), type="interrupted"))
                self._escalate("interrupt" if cell.stage == 0 else cell.why_interrupted)
            elif cell is not None and cell.client is client:
                if header.get("kill") or cell.stage == 0:
                    self._escalate("interrupt")
                else:  # pressed again: another KeyboardInterrupt, as locally
                    self._sigint(group=True)
        elif kind == "input_reply":
            # Only the client whose cell asked may answer it.
            if cell is not None and self.worker is not None and cell.client is client:
                value, error = header.get("value"), header.get("error")
                reply = {"type": "input_reply",
                         "value": value if isinstance(value, str) else None,
                         "error": error if isinstance(error, str) else None}
                self._to_worker(protocol.encode(reply))
        elif kind == "reset":
            ended = None
            if cell is not None:
                if not header.get("force"):
                    self._send(client, dict(self._owner(), type="busy"))
                    return
                ended = self._owner()
                reason = header.get("reason")
                if not (isinstance(reason, str) and reason):
                    reason = "the instance was reset by %s" % client.who
                self._worker_died("was ended: %s" % reason[:300], start_deferred=False)
            else:
                self._replace_worker()
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
                self._send(client, dict(self._owner(), type="busy", id=header.get("id")))
            return
        notice = self.notice
        self.notice = None
        if header.get("reset"):
            self._replace_worker()
            notice = None
        self.cell = Cell(header, time.monotonic(), self.config["output_limit"], client)
        if notice:
            self._to_cell({"type": "notice", "text": notice})
        if self._ensure_worker() is None:
            self._to_cell({"type": "done", "status": "killed", "state_lost": True,
                           "reason": "could not start: the instance's memory or "
                                     "process limit is full; `%dockerrun restart` helps"})
            self.cell = None
            return
        fwd = {"type": "execute", "stdin": bool(header.get("stdin")),
               "cell_name": header.get("cell_name"), "first_line": header.get("first_line")}
        self._to_worker(protocol.encode(fwd, payload))

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

    def farewell(self, text):
        for client in list(self.clients.values()):
            self._send(client, {"type": "notice", "text": text})
        self._shutdown()

    def _shutdown(self):
        if self.worker is not None:
            self.worker.signal(signal.SIGKILL)
        for client in list(self.clients.values()):
            try:
                os.set_blocking(client.out_fd, True)
                while client.queue:
                    os.write(client.out_fd, client.queue.popleft())
            except OSError:
                pass
            client.close()


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
        supervisor.farewell("the agent failed (%s: %s); the container stops"
                            % (type(exc).__name__, str(exc)[:300]))
        raise
