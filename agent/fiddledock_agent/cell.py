"""The cell being run: who asked, its checked limits, what it has sent, and
how far its interruption has gone (``stage``, the escalation the supervisor's
docstring describes)."""

from fiddledock_agent import probes

# Cell.stage: the escalation step a cell has reached (see supervisor.py).
RUNNING = "running"  # not interrupted
SIGINT_SENT = "sigint sent"
OTHERS_KILLED = "others killed"


def _number(value, default=0.0):
    """A finite number from a request field, else default (requests are checked, never trusted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if value != value or value in (float("inf"), float("-inf")):
        return default
    return value


class Cell:
    """One execute request, its fields checked (requests are never trusted)."""

    def __init__(self, header, now, output_limit, client):
        self.id = header.get("id")
        self.client = client  # a Client; None once it is gone
        self.started = now
        timeout = max(0.0, float(_number(header.get("timeout"))))
        self.deadline = now + timeout if timeout > 0 else None
        self.timeout = timeout
        self.output_limit = int(max(0, _number(header.get("output_limit")))) or output_limit
        self.owner = client.who
        grace = _number(header.get("interrupt_grace"), None)
        self.grace = None if grace is None else max(0.0, grace)
        self.sent = 0
        self.dropped = 0
        self.limit_told = False
        self.stage = RUNNING
        self.kill_at = None  # when the current escalation step runs out
        self.why_interrupted = None  # "timeout", "interrupt" or "client_gone"
        self.children_killed = 0
        self.oom_before = probes.oom_kill_count()
        self.pids_before = probes.pids_max_count()
