"""Every sentence the supervisor tells the user: notices beneath a cell and the
reasons a cell was ended, in one place so they read alike.

Each is one or two short clauses: what happened, then what to do if anything
(folders that are full: ``limits``).
"""

import os
import signal

from fiddledock_agent import probes


def size_text(n):
    if n < 1024:
        return "%d bytes" % n
    if n < 1024 * 1024:
        return "%.1f KiB" % (n / 1024)
    return "%.1f MiB" % (n / (1024 * 1024))


def memory_limit_text():
    limit = probes.memory_limit()
    if limit is None:
        return "no limit"
    return "limit %d MiB" % (limit // (1024 * 1024))


# --- notices beneath the running cell ---------------------------------------------
def output_limit_reached(limit):
    return ("output limit of %s reached: the rest of this cell's output is not shown, but "
            "the code keeps running (`%%config DockerRun.output_limit` raises the limit)"
            % size_text(limit))


def process_limit_hit(limit, children_ended):
    # Processes ended with the cell need no advice; others may still run.
    return ("this cell hit the process limit%s: it could not start more processes or "
            "threads%s" % (" (%d)" % limit if limit else "",
                           "" if children_ended else "; `%dockerrun reset` ends all of them"))


def out_of_memory():
    return ("out of memory (%s): a process this cell started was killed to free memory"
            % memory_limit_text())


def timed_out_but_went_on(timeout, children_ended):
    return ("timed out after %g s: the code was interrupted, caught the KeyboardInterrupt "
            "and went on%s" % (timeout, _children_ended(children_ended)))


def interrupted_children_ended():
    return ("interrupted: the processes it started did not stop, so they were ended; "
            "its variables are kept")


def state_lost(reason, during_cell):
    """The next cell's notice after the worker died (``reason`` as below)."""
    if during_cell:
        why = "the previous cell %s" % reason
    else:
        why = "after the last cell ended, Python in the instance %s" % reason
    return ("earlier variables and imports are gone because %s; run again the cells "
            "this one needs" % why)


# --- why a cell ended (``done``'s reason; the notebook prefixes "the cell") ---------
def timed_out_and_stopped(timeout, children_ended):
    return ("timed out after %g s and was stopped%s; its variables are kept"
            % (timeout, _children_ended(children_ended)))


def _children_ended(children_ended):
    return "; the processes it started were ended" if children_ended else ""


def could_not_start():
    return ("could not start: the instance is out of memory or processes; restart it "
            "with `%dockerrun restart`")


def did_not_stop(timeout):
    """Killed after the escalation: ``timeout`` None when it was interrupted."""
    if timeout is not None:
        return ("timed out after %g s and did not stop on KeyboardInterrupt, so it was "
                "killed" % timeout)
    return "interrupted and did not stop on KeyboardInterrupt, so it was killed"


def ended_by_reset(reason):
    return "was ended: %s" % reason[:300]


def reset_by(who):
    return "the instance was reset by %s" % who


WORKER_STOPPED_READING = "stopped answering FiddleDock, so it was killed"
WORKER_CLOSED_CHANNEL = "closed its connection to FiddleDock, so it was killed"
WORKER_WROTE_GARBAGE = "damaged its connection to FiddleDock, so it was killed"


def exit_reason(status, out_of_memory_kill=False, files_bytes=0):
    """A one-line reason from a waitpid status (an OOM kill says so)."""
    if out_of_memory_kill:
        reason = "was killed: out of memory (%s)" % memory_limit_text()
        if files_bytes >= 1024 * 1024:
            reason += ("; files in /tmp and the home folder take %s of it"
                       % size_text(files_bytes))
        return reason
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


# --- to a client, not beneath a cell ------------------------------------------------
def malformed_frame(exc):
    return "the instance closed this connection: it sent a malformed message (%s)" % exc


def failed_request(exc):
    return ("the instance closed this connection: a request failed (%s: %s)"
            % (type(exc).__name__, str(exc)[:200]))


def agent_failed(exc):
    return ("FiddleDock inside the instance failed (%s: %s), so the instance stops; the "
            "next cell starts it afresh" % (type(exc).__name__, str(exc)[:300]))
