"""Packages installed while the worker runs: importable in the next cell.

``%dockerrun install`` puts packages in the user site of the home folder
(``~/.local/lib/pythonX.Y/site-packages``). Python adds that folder to
``sys.path`` only if it exists when the interpreter starts, and the agent
started before any install; and the import system caches folder listings.
So before each cell the worker calls ``refresh()``: once the folder exists
it goes on ``sys.path`` ahead of the system's site-packages (as Python would
have put it; its ``.pth`` files are read), and whenever the folder changed
the import caches are invalidated. A module imported before keeps its
version until the worker starts afresh.
"""

import importlib
import os
import site
import sys

_seen = {"mtime": None}


def user_site():
    return site.getusersitepackages()


def refresh():
    """Make packages installed since the last cell importable; cheap when nothing changed."""
    try:
        path = user_site()
        mtime = os.stat(path).st_mtime_ns
        if path not in sys.path:
            _add_before_system(path)
        if mtime != _seen["mtime"]:
            _seen["mtime"] = mtime
            importlib.invalidate_caches()
    except Exception:  # no user site yet (or the cell broke site): the cell runs as it is
        pass


def _add_before_system(path):
    """site.addsitedir (which reads .pth files), then moved ahead of the system's folders."""
    before = list(sys.path)
    site.addsitedir(path)
    added = [p for p in sys.path if p not in before]
    system = set(site.getsitepackages())
    rest = [p for p in sys.path if p not in added]
    at = next((i for i, p in enumerate(rest) if p in system), len(rest))
    sys.path[:] = rest[:at] + added + rest[at:]
