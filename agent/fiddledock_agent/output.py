"""A running cell's events on their way to its client.

Stream output (the worker's own writes and its child processes' pipes) is
capped at the cell's output limit, once told, and coalesced: bytes of one
stream wait at most ``STREAM_DELAY``, or until ``STREAM_CHUNK`` are pending,
to go as one frame, so a loop of prints makes few frames. Every other event
sends the pending streams first, so the order the cell wrote in is kept.
Back-pressure: while more than ``HIGH_WATER`` bytes wait unread in the
client's queue, the worker is not read (its writes block, as a slow
terminal's would); once the client has read on, it is read again.
"""

import time

from fiddledock_agent import notices
from fiddledock_agent import protocol

STREAM_DELAY = 0.004  # output waits at most this long to be coalesced into one frame
STREAM_CHUNK = 64 * 1024  # ... or until this much is pending
HIGH_WATER = 8 * 1024 * 1024  # stop reading the worker while this much waits


class CellOutput:
    """The cell's output queue: ``cell`` (None between cells) and what it has pending.

    ``send(client, header, payload)`` queues a frame for a client without
    bounds; ``read_worker(on)`` starts or stops reading the worker.
    """

    def __init__(self, send, read_worker):
        self._send = send
        self._read_worker = read_worker
        self.cell = None
        self._pending = []  # [name, bytearray]: stream output not yet framed
        self._size = 0
        self._since = None  # when the oldest pending byte came

    def stream(self, name, data):
        """Output of the cell (dropped between cells: a background process's)."""
        cell = self.cell
        if cell is None:
            return
        room = cell.output_limit - cell.sent
        if len(data) > room:
            cell.dropped += len(data) - room
            data = data[:room]
        if data:
            cell.sent += len(data)
            if self._pending and self._pending[-1][0] == name:
                self._pending[-1][1] += data
            else:
                self._pending.append([name, bytearray(data)])
            self._size += len(data)
            if self._since is None:
                self._since = time.monotonic()
            if self._size >= STREAM_CHUNK:
                self.flush()
        if cell.dropped and not cell.limit_told:
            cell.limit_told = True
            self.event(protocol.notice(notices.output_limit_reached(cell.output_limit)))

    def event(self, header, payload=b""):
        """Any other event of the cell, after the output it wrote before."""
        self.flush()
        cell = self.cell
        header["id"] = cell.id
        self._send(cell.client, header, payload)

    def notice(self, text):
        self.event(protocol.notice(text))

    def flush(self):
        pending, self._pending = self._pending, []
        self._size = 0
        self._since = None
        cell = self.cell
        for name, data in pending:
            header = protocol.stream(name)
            header["id"] = cell.id
            self._send(cell.client, header, bytes(data))

    def flush_at(self):
        """When pending output is due to be sent; None if there is none."""
        return None if self._since is None else self._since + STREAM_DELAY

    def written(self, client):
        """Some of client's queue was written: back-pressure for the cell's client."""
        if self.cell is not None and client is self.cell.client:
            self._read_worker(client.queued < HIGH_WATER)
