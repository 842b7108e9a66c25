"""The client side of the agent protocol, over a Docker attach socket.

Framing and message types are defined once, in ``fiddledock_agent.protocol``
(documented there). This module adds what only the client needs: taking
Docker's stream multiplexing apart and waiting for frames with a deadline.
"""

import select
import socket
import time
import uuid

from fiddledock_agent.protocol import VERSION, FrameReader, ProtocolError, encode

from ._engine import StreamDemux, close_quietly
from ._errors import AgentError

__all__ = ["AgentConnection", "VERSION", "ProtocolError"]

STDOUT, STDERR = 1, 2
_STDERR_KEEP = 8192


class ConnectionClosed(AgentError):
    """The attach stream ended: the container stopped or the engine went away."""


class AgentConnection:
    """Frames to and from one container's agent.

    ``sock`` is the raw socket of an attach request with stdin, stdout and
    stderr (no TTY), so Docker prefixes each chunk with an 8-byte header
    naming the stream. The agent's frames come on stdout; its stderr is kept
    (the last few KB) to explain a crash.
    """

    def __init__(self, sock, keepalive=None):
        self.sock = sock
        self.client_id = uuid.uuid4().hex[:12]
        self._mux = StreamDemux()
        self._frames = FrameReader()
        self._ready = []
        self._keepalive = keepalive  # the docker-py response object behind sock
        self.agent_stderr = bytearray()
        self.closed = False
        self.skipped = 0  # events addressed to other clients, dropped

    def send(self, header, payload=b""):
        header = dict(header)
        header["from"] = self.client_id
        try:
            self.sock.sendall(encode(header, payload))
        except OSError as exc:
            self.closed = True
            raise ConnectionClosed("cannot write to the container: %s" % exc)

    def recv(self, timeout=None):
        """The next frame addressed to us, or None when timeout passes.

        Events addressed to other clients of the same instance are skipped;
        a stream of them still returns None once timeout has passed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        skipped = self.skipped
        while True:
            while self._ready:
                header, payload = self._ready.pop(0)
                to = header.get("to")
                if to is None or to == self.client_id:
                    return header, payload
                self.skipped += 1
            if self.closed:
                raise ConnectionClosed("the container's stream ended")
            if timeout is not None:
                wait = deadline - time.monotonic()
                if wait < 0 and self.skipped > skipped:
                    return None
                readable, _, _ = select.select([self.sock], [], [], max(0.0, wait))
                if not readable:
                    return None
            try:
                data = self.sock.recv(1 << 18)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError as exc:
                self.closed = True
                raise ConnectionClosed("the container's stream broke: %s" % exc)
            if not data:
                self.closed = True
                raise ConnectionClosed("the container's stream ended")
            self._demux(data)

    def _demux(self, data):
        for stream, chunk in self._mux.feed(data):
            if stream == STDOUT:
                self._frames.feed(chunk)
            elif stream == STDERR:
                self.agent_stderr += chunk
                del self.agent_stderr[:-_STDERR_KEEP]
        try:
            self._ready.extend(self._frames.frames())
        except ProtocolError as exc:
            self.closed = True
            raise AgentError("the container's agent sent garbage (%s); restart the instance" % exc)

    def close(self):
        self.closed = True
        close_quietly(self.sock, self._keepalive)
