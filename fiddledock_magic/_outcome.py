"""What a finished cell's ``done`` header means: its status and the error to show.

Shared by a cell on one instance (``_magics``) and on several (``_multirun``),
so both name a failure alike. Statuses are the ones a cell's last result is
recorded with: ``ok``, ``error``, ``timeout``, ``interrupted``.
"""


from . import _traceback
from ._errors import CellEnded, CellError, CellKilled, CellTimeout, InstanceLost

STATUSES = ("ok", "error", "timeout", "interrupted")


def remote_traceback(error, instance, shell):
    """The lines of a container's traceback, drawn as a local cell's."""
    frames = error.get("frames")
    if frames is None:  # an agent that sends text only
        lines = list(error.get("traceback") or [])
        if lines:
            lines[-1] = "\x1b[0;31m%s\x1b[0m" % lines[-1]
        return lines
    return _traceback.render(error.get("ename") or "Error", error.get("evalue") or "", frames,
                             instance, shell)


def remote_error(error, instance, shell):
    """A CellError whose class name is the container exception's name."""
    ename = str(error.get("ename") or "Error")
    if not ename.isidentifier():
        ename = "Error"
    cls = type(ename, (CellError,), {"__module__": "fiddledock.container"})
    return cls(ename, error.get("evalue", ""), remote_traceback(error, instance, shell))


def cell_outcome(done, instance, timeout, ended_by, shell):
    """``(status, error)`` of a cell that ended with the agent's ``done``; error is None when ok."""
    status = done.get("status")
    if status == "ok":
        return "ok", None
    reason = done.get("reason")
    if status in ("error", "interrupted"):
        return status, remote_error(done.get("error") or {"ename": "KeyboardInterrupt"},
                                    instance, shell)
    if status == "timeout":  # KeyboardInterrupt stopped it: show where it was
        return "timeout", CellTimeout(
            reason or "timed out after %g s and was stopped; its variables are kept" % timeout,
            remote_traceback(done.get("error") or {}, instance, shell))
    if ended_by and status == "killed":  # reset (from the panel, say) while it ran
        return "error", CellEnded(instance, ended_by)
    # the worker died or was killed: say why, and that the state is gone
    timed_out = done.get("cause") == "timeout"
    cls = CellTimeout if timed_out else CellKilled
    return ("timeout" if timed_out else "error"), cls(
        "the cell %s; its variables and imports are gone (its files are kept), and the next "
        "cell starts a fresh Python in this instance" % (reason or "died"))


def lost_error(exc, ended_by):
    """The error for a container that stopped under the cell (``InstanceLost`` exc)."""
    if ended_by:  # restarted or deleted (from the panel, say) while it ran
        return CellEnded(exc.name, ended_by)
    return InstanceLost(exc.name, "%s. The next cell starts it again from scratch: its variables "
                        "and files are gone" % exc.reason)
