"""Background work that gives way to the kernel's cells.

The panel refreshes on a thread of its own: reading a hundred containers'
answers and drawing a hundred rows is tens of milliseconds of Python, under
the GIL. A thread that runs Python keeps the GIL until the interpreter
forces a switch (5 ms), so each time a cell on the main thread comes back
from a socket it could wait that long. ``give_way()`` between two pieces of
such work sleeps a moment on a background thread, which hands the GIL over
at once to a main thread waiting for it; on the main thread (`%dockerrun
list`) it does nothing. While a cell of this kernel has been running for
less than ``GRACE``, background work waits at ``give_way()`` for it to end:
a warm cell takes milliseconds and then has the kernel to itself, while the
panel of a long cell still refreshes (a second late).
"""

import contextlib
import threading
import time

PAUSE = 0.0003  # s: long enough for a waiting thread to take the GIL
GRACE = 1.0     # s: how long background work waits for a young cell

_cells = threading.Condition()
_running = {}   # a token per running cell -> when it started


@contextlib.contextmanager
def cell_running():
    """Marks a cell of this kernel as running, for ``give_way()``."""
    token = object()
    with _cells:
        _running[token] = time.monotonic()
    try:
        yield
    finally:
        with _cells:
            del _running[token]
            _cells.notify_all()


def give_way():
    if threading.current_thread() is threading.main_thread():
        return
    with _cells:
        # Only the cells running now are waited for, so one piece of work gets
        # done between two cells however closely they follow each other.
        now = time.monotonic()
        young = [token for token, since in _running.items() if now - since < GRACE]
        while young:
            young = [token for token in young if token in _running]
            if not young:
                break
            wait = min(_running[token] for token in young) + GRACE - time.monotonic()
            if wait <= 0:
                break
            _cells.wait(wait)
    time.sleep(PAUSE)
