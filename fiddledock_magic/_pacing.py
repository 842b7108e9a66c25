"""Background work that gives way to the kernel's cells.

The panel refreshes on a thread of its own: reading a hundred containers'
answers and drawing a hundred rows is tens of milliseconds of Python, under
the GIL. A thread that runs Python keeps the GIL until the interpreter
forces a switch (5 ms), so each time a cell on the main thread comes back
from a socket it could wait that long. ``give_way()`` between two pieces of
such work sleeps a moment on a background thread, which hands the GIL over
at once to a main thread waiting for it; on the main thread (`%dockerrun
list`) it does nothing. While a cell of this kernel has been running for less
than ``GRACE``, background work waits at ``give_way()`` for it to end: a warm
cell takes milliseconds and then has the kernel to itself, while the panel of
a long cell still refreshes (a second late). ``wait_for_a_pause()`` holds a
periodic refresh back while warm cells follow each other without a rest: a
hundred rows' stats keep the engine, which carries every cell's stream, busy
for a moment.
"""

import contextlib
import threading
import time

PAUSE = 0.0003  # s: long enough for a waiting thread to take the GIL
GRACE = 1.0     # s: how long background work waits for a young cell

_cells = threading.Condition()
_running = {}   # a token per running cell -> when it started
_last_end = [0.0]  # when the kernel's last cell ended (monotonic)


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
            _last_end[0] = time.monotonic()
            _cells.notify_all()


def wait_for_a_pause(quiet, at_most):
    """Return once the kernel rests (no cell for ``quiet`` seconds) or runs a long
    cell (one over ``GRACE`` old), or after ``at_most``: a periodic refresh is held
    back while warm cells follow each other, and comes later all the same."""
    deadline = time.monotonic() + at_most
    with _cells:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            if _running:
                youngest = max(_running.values())
                if now - youngest >= GRACE:
                    return
                wait = youngest + GRACE - now
            else:
                rested = now - _last_end[0]
                if rested >= quiet:
                    return
                wait = quiet - rested
            _cells.wait(min(wait, deadline - now))


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
