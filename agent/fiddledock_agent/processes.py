"""The processes of the instance, as the supervisor handles them.

``WorkerProcess`` is the worker's whole life: the fork, the child's setup
before any cell code runs (its own session, first in line for the OOM
killer, signals, fds 0/1/2, the sandbox user), then signals, reaping. The
functions below sweep what a cell left behind: every other process of the
cell's user, killed until none is left, and zombies reaped.
"""

import _thread
import gc
import os
import signal
import socket
import sys
import time

from fiddledock_agent import interrupts
from fiddledock_agent import probes
from fiddledock_agent import protocol
from fiddledock_agent import worker as worker_mod

KILL_WAIT = 2.0  # how long to wait for killed processes to be gone


class WorkerProcess:
    """The supervisor's handle on one worker: its pid, socket and pipes."""

    def __init__(self, identity):
        parent_sock, child_sock = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.oom_before = probes.oom_kill_count()
        _before_fork()
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
                _become_worker(child_sock, out_w, err_w, identity)
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


def _before_fork():
    """Keep what the worker shares with us small and untouched, as the cgroup counts
    a page once while neither process writes to it.

    Cyclic garbage is collected, then every object is moved out of the garbage
    collector's reach (``gc.freeze``): a full collection in either process
    would write to each object it shares with the other and copy its page.
    Free memory goes back to the kernel (``malloc_trim``, through ctypes when
    the seccomp filter loaded it; glibc only): compiling the agent's sources
    left about 1 MiB of free heap. A few ms at the first fork, less after.
    """
    gc.collect()
    gc.freeze()
    ctypes = sys.modules.get("ctypes")
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _become_worker(sock, stdout_fd, stderr_fd, identity=(None, None)):
    """In the forked child: become the worker and serve.

    ``identity``: ``((uid, gid) or None, home folder or None)``.
    """
    os.setsid()
    try:  # the OOM killer should take the worker, never the supervisor
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    signal.set_wakeup_fd(-1)  # the supervisor's; its fd is closed below
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    # As in any Python: a write to a closed pipe or socket is BrokenPipeError,
    # not the death of the worker.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    interrupts.install()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    keep = {0, 1, 2, sock.fileno()}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    _become(*identity)
    interrupts.Guard.pid, interrupts.Guard.main = os.getpid(), _thread.get_ident()
    interrupts.Guard.sock = sock
    worker = worker_mod.Worker(interrupts.GuardedChannel(sock))
    interrupts.Guard.worker = worker
    os.register_at_fork(after_in_child=interrupts.after_fork_in_child)
    worker.serve()


def _become(identity, home):
    """Drop to the sandbox user (uid, gid) for good, then go home.

    After this no capability is left, so nothing the cell starts can signal,
    trace or write into the supervisor (root) or a file helper.
    """
    if identity is not None:
        uid, gid = identity
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if home:
        try:
            os.chdir(home)
        except OSError:
            pass


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


def kill_others(keep=(), uid=None, reap=False):
    """SIGKILL every process in the container but init, us and keep.

    A child that called setsid() escapes the worker's process group; in a
    container this project owns, anything else running is such a leftover.
    Repeats until they are gone, so a fork bomb cannot outrun it. ``uid``:
    only that user's (the cell's). ``reap``: reap zombies meanwhile (when
    there is no worker whose exit status is still wanted). Returns how many
    processes were found.
    """
    found = set()
    deadline = time.monotonic() + KILL_WAIT
    while True:
        pids = probes.other_pids(keep, uid)
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
        if reap:
            reap_zombies()
        time.sleep(0.005)


def reap_zombies(worker=None):
    """Children nobody waits for: killed workers, and orphans when we are PID 1.

    The exit status of ``worker`` (the current one, if any) is kept for
    ``WorkerProcess.exited``.
    """
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if worker is not None and pid == worker.pid:
            worker.status = status
