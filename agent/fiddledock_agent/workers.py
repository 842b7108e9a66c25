"""The supervisor's one worker at a time: started, watched, replaced.

``WorkerSlot`` holds the current worker (``current``, None while there is
none): it starts one (retrying while the pids or memory limit is still
full), registers its socket and pipes on the supervisor's selector or takes
them off (back-pressure), reads its child processes' output from the pipes,
and replaces it with a fresh one, killing and reaping the old one and
everything the cell left behind. What a worker's death means for the cell is
the supervisor's to decide.
"""

import os
import selectors
import signal
import time

from fiddledock_agent import processes

READ_SIZE = 256 * 1024


class WorkerSlot:
    """``on_socket(mask)``: the worker's socket is readable; ``on_output(name,
    data)``: its child processes wrote to fd 1 or 2."""

    def __init__(self, selector, identity, home, contained, on_socket, on_output):
        self.selector = selector
        self.identity = identity  # (uid, gid) the worker becomes, or None
        self.home = home
        self.contained = contained  # sweeping other processes is ours to do
        self.on_socket = on_socket
        self.on_output = on_output
        self.current = None
        self.reading = False

    def spawn(self):
        """Start a worker; False if none could start within KILL_WAIT."""
        deadline = time.monotonic() + processes.KILL_WAIT
        while True:
            try:
                self.current = processes.WorkerProcess((self.identity, self.home))
                break
            except OSError:
                if time.monotonic() >= deadline:
                    self.current = None
                    return False
                processes.reap_zombies(self.current)
                time.sleep(0.02)
        self.watch(True)
        return True

    def ensure(self):
        """A live worker, or None if none can be started now."""
        if self.current is None and not self.spawn():
            return None
        return self.current

    def watch(self, on):
        """Read from the worker or not (back-pressure when the client is slow)."""
        w = self.current
        if w is None or on == self.reading:
            return
        if on:
            self.selector.register(w.sock, selectors.EVENT_READ, self.on_socket)
            for fd in w.pipes:
                self.selector.register(fd, selectors.EVENT_READ, None)
        else:
            for fd in [w.sock] + list(w.pipes):
                try:
                    self.selector.unregister(fd)
                except (KeyError, ValueError):
                    pass
        self.reading = on

    def owns_pipe(self, fd):
        return self.current is not None and fd in self.current.pipes

    def read_pipe(self, fd):
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if data:
            self.on_output(self.current.pipes[fd], data)
        else:  # every writer is gone; the socket tells whether the worker is
            self.selector.unregister(fd)
            del self.current.pipes[fd]
            os.close(fd)

    def drain_pipes(self):
        """What child processes wrote so far, before a later event.

        One read per pipe takes all a pipe holds (64 KiB); reading on could
        chase a writer that never stops.
        """
        if self.current is None:
            return
        for fd, name in list(self.current.pipes.items()):
            try:
                data = os.read(fd, READ_SIZE)
            except (BlockingIOError, OSError):
                continue
            if data:
                self.on_output(name, data)

    def kill_others(self, keep=()):
        """SIGKILL every other process of the cell's user; how many there were."""
        if not self.contained:
            return 0
        uid = self.identity[0] if self.identity else None
        return processes.kill_others(keep, uid, reap=self.current is None)

    def kill_children(self):
        """Every process but the worker; how many there were."""
        return self.kill_others(keep=(self.current.pid,))

    def replace(self, spawn=True):
        """A fresh worker (and namespace); the old one is killed and reaped.

        Returns the old worker and its exit status (None if there was none).
        """
        old = self.current
        status = None
        if old is not None:
            old.signal(signal.SIGKILL)
            self.kill_others(keep=(old.pid,))
            self.drain_pipes()  # what its children wrote before they died
            self._drop()
            status = old.reap()
        self.kill_others()
        processes.reap_zombies(self.current)
        if spawn:
            self.spawn()
        return old, status

    def _drop(self):
        """Forget the current worker: close its fds."""
        w = self.current
        self.watch(False)
        self.current = None
        w.sock.close()
        for fd in w.pipes:
            os.close(fd)

    def reap_zombies(self):
        processes.reap_zombies(self.current)
