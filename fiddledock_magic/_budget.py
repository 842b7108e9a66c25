"""What one cell may show, enforced in the kernel whatever the agent claims.

The agent keeps to these limits itself; a container controlled by hostile
code (or a hostile image) may not. ``CellBudget`` lets through what fits the
cell's limits (stream bytes, outputs beneath the cell, bytes of rich
output), drops the rest with one notice per limit, and raises ``Flood`` once
an agent has sent far more than a well-behaved one ever would
(``fiddledock_agent.protocol``: ``CELL_*``), so the caller can stop it.
"""

from fiddledock_agent.protocol import CELL_DISPLAY_BYTES, CELL_DISPLAYS, CELL_NOTICES
from fiddledock_agent.notices import size_text

DEFAULT_OUTPUT_LIMIT = 4 * 1024 * 1024  # the agent's own, when the client sets none
STREAM_SLACK = 1024 * 1024  # stream bytes past output_limit before the agent counts as hostile
MAX_JUNK = 1000  # frames for no one (other cells, unknown types, empty) in one cell
MAX_INPUT_REQUESTS = 10000


class Flood(Exception):
    """The agent sent far past what a cell may show; the text says what."""


DISPLAY_LIMIT = 1000  # DockerRun.display_limit's default
DISPLAY_BYTES_LIMIT = 48 * 1024 * 1024  # DockerRun.display_bytes_limit's default


def cell_budget(output_limit, config=None):
    """The budget of one cell, with the limits of config (a DockerRun) where it has them."""
    return CellBudget(output_limit, getattr(config, "display_limit", DISPLAY_LIMIT),
                      getattr(config, "display_bytes_limit", DISPLAY_BYTES_LIMIT))


class CellBudget:
    def __init__(self, output_limit=None, display_limit=DISPLAY_LIMIT,
                 display_bytes=DISPLAY_BYTES_LIMIT):
        self.output_limit = int(output_limit or DEFAULT_OUTPUT_LIMIT)
        self.display_limit = int(display_limit)
        self.display_bytes = int(display_bytes)
        self.stream_bytes = 0
        self.outputs = 0  # outputs beneath the cell since its last clear_output
        self.rich_events = 0
        self.rich_bytes = 0
        self.notices = 0
        self.input_requests = 0
        self.junk = 0
        self.told = set()  # limits already named in a notice
        self.pending = []  # notices for the user, taken by take_notices()

    def _tell(self, limit, text):
        if limit not in self.told:
            self.told.add(limit)
            self.pending.append(text)

    def take_notices(self):
        pending, self.pending = self.pending, []
        return pending

    def junk_frame(self, what):
        """A frame that carries nothing for this cell."""
        self.junk += 1
        if self.junk > MAX_JUNK:
            raise Flood("more than %d frames that belong to no cell (%s)" % (MAX_JUNK, what))

    def admit(self, event):
        """The event (or what of it fits) to show; None when it is dropped."""
        kind = event.kind
        if kind == "stream":
            return self._stream(event)
        if kind in ("display", "result"):
            return self._rich(event)
        if kind == "notice":
            self.notices += 1
            if self.notices > CELL_NOTICES:
                raise Flood("more than %d notices" % CELL_NOTICES)
            return event
        if kind == "input_request":
            self.input_requests += 1
            if self.input_requests > MAX_INPUT_REQUESTS:
                raise Flood("more than %d input() requests" % MAX_INPUT_REQUESTS)
        return event

    def _stream(self, event):
        if not event.data:
            self.junk_frame("empty output")
            return None
        room = self.output_limit - self.stream_bytes
        self.stream_bytes += len(event.data)
        if self.stream_bytes > self.output_limit + STREAM_SLACK:
            raise Flood("more than %s of output, the cell's limit being %s"
                        % (size_text(self.stream_bytes), size_text(self.output_limit)))
        if len(event.data) > room:
            self._tell("output", "output limit of %s reached: further output of this cell is "
                                 "dropped (DockerRun.output_limit)" % size_text(self.output_limit))
            if room <= 0:
                return None
            event.data = event.data[:room]
        return event

    def _rich(self, event):
        self.rich_events += 1
        self.rich_bytes += event.size
        # Metadata is counted here by an estimate: a quarter more leaves room for its error.
        if self.rich_events > CELL_DISPLAYS or self.rich_bytes > CELL_DISPLAY_BYTES * 5 // 4:
            raise Flood("%d displays, %s of them" % (self.rich_events, size_text(self.rich_bytes)))
        if event.control.get("clear"):
            self.outputs = 0
            return event
        if self.rich_bytes > self.display_bytes:
            self._tell("bytes", "rich output truncated: this cell already showed %s of "
                                "displays (DockerRun.display_bytes_limit); the rest is dropped"
                       % size_text(self.display_bytes))
            return None
        if event.is_new_output:
            if self.outputs >= self.display_limit:
                self._tell("count", "display limit reached: this cell already shows %d "
                                    "outputs (DockerRun.display_limit); the rest is dropped"
                           % self.display_limit)
                return None
            self.outputs += 1
        return event
