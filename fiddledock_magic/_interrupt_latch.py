"""The notebook's interrupt button while a cell runs in an instance: counted, then forwarded."""

import contextlib
import signal
import threading


class InterruptLatch:
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
