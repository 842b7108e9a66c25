"""Background work that gives way to the kernel's cells.

The panel refreshes on a thread of its own: reading a hundred containers'
answers and drawing a hundred rows is tens of milliseconds of Python, under
the GIL. A thread that runs Python keeps the GIL until the interpreter
forces a switch (5 ms), so each time a cell on the main thread comes back
from a socket it could wait that long. ``give_way()`` between two pieces of
such work sleeps a moment on a background thread, which hands the GIL over
at once to a main thread waiting for it; on the main thread (`%dockerrun
list`) it does nothing.
"""

import threading
import time

PAUSE = 0.0003  # s: long enough for a waiting thread to take the GIL


def give_way():
    if threading.current_thread() is not threading.main_thread():
        time.sleep(PAUSE)
