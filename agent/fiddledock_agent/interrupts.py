"""When SIGINT becomes KeyboardInterrupt in the worker.

SIGINT (a timeout, the notebook's interrupt button) raises KeyboardInterrupt
only inside the cell's code: one raised while the worker is halfway through
writing a frame would corrupt its channel, and one raised while it sends the
cell's end would lose that end. A SIGINT that comes with a cell whose code
has not started yet ends it as it starts. A process the cell forks is kept
off the channel (its output goes to the pipes on fds 1 and 2).
"""

import _thread
import builtins
import io
import os
import signal
import sys

from fiddledock_agent import streams

# A worker inside os.system() ignores SIGINT at the C level, so the supervisor
# also sends NUDGE, which waits until the call returns and then acts as the
# SIGINT the code's own Python-level handler would have got.
NUDGE = getattr(signal, "SIGRTMIN", 34) + 4


class Guard:
    """What the handlers need to know: which process and thread, and what it is doing."""

    pid = None  # the worker's pid: a process made by os.fork() in a cell differs
    main = None  # the main thread, where signal handlers run
    sock = None
    worker = None
    sending = False  # the main thread is writing a frame
    pending = False  # a SIGINT came while it was
    waiting = False  # the main thread waits for the next cell
    starting = False  # ... or has its execute request but runs none of its code yet
    early = False  # a SIGINT came for a cell whose code had not started: raised when it does


def _cell_requested():
    """Whether an execute request is in the channel, not yet read."""
    return Guard.worker is not None and Guard.worker.channel.unread()


def _in_cell_code(frame):
    while frame is not None:
        if frame.f_code.co_filename.startswith("<cell "):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame):
    if Guard.sending:
        Guard.pending = True
    elif _in_cell_code(frame):
        raise KeyboardInterrupt
    elif Guard.starting or (Guard.waiting and _cell_requested()):
        Guard.early = True  # the interrupt came with the cell: it ends it as it starts
    # else: no cell code is running (it is finishing): nothing to interrupt


def _on_nudge(signum, frame):
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # not when the code chose SIG_IGN itself
        handler(signal.SIGINT, frame)


def install():
    """The worker's SIGINT and NUDGE handlers."""
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(NUDGE, _on_nudge)


class GuardedChannel(streams.Channel):
    """The channel, with sends a KeyboardInterrupt cannot cut in half."""

    def send(self, header, payload=b""):
        if os.getpid() != Guard.pid:
            return  # a forked child: the channel is the worker's alone
        if _thread.get_ident() != Guard.main:
            return super().send(header, payload)
        Guard.sending = True
        try:
            super().send(header, payload)
        finally:
            Guard.sending = False
        if Guard.pending:
            Guard.pending = False
            if _in_cell_code(sys._getframe(1)):
                raise KeyboardInterrupt

    def recv(self):
        if os.getpid() != Guard.pid:
            _child_exit()  # a forked child came back from the cell's code: it is done
        return super().recv()


def _child_exit(code=0):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _no_input(prompt=""):
    raise EOFError("input() is not available in a process forked by the cell")


def after_fork_in_child():
    """A cell called os.fork() (or multiprocessing did): keep the child off the channel.

    Its output goes to fds 1 and 2, the pipes the supervisor reads for every
    child process, so it is still shown.
    """
    Guard.pending = Guard.sending = False
    try:
        os.close(Guard.sock.detach())
    except OSError:
        pass
    out, err = [io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                 errors="surrogateescape", line_buffering=True)
                for fd in (1, 2)]
    sys.stdout, sys.stderr = out, err
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    builtins.input = _no_input
    worker = Guard.worker
    if worker is not None:
        worker.stdout, worker.stderr = out, err
        worker.stdin_allowed = False

