"""The client side of the agent protocol, over one exec'd relay's streams.

Framing and message types are defined once, in ``fiddledock_agent.protocol``
(documented there). This module adds what only the client needs: taking
Docker's stream multiplexing apart (``StreamDemux``: the backend's exec
streams come in that format) and waiting for frames with a deadline.
Each connection is this client's own byte stream to the agent (see the
transport section there), so nothing another client sends can reach it.
"""

import math
import select
import socket
import struct
import threading
import time

from fiddledock_agent.protocol import VERSION, FrameReader, ProtocolError, encode

from ._errors import AgentError, plain_text

__all__ = ["AgentConnection", "VERSION", "ProtocolError", "StreamDemux", "close_quietly"]

STDOUT, STDERR = 1, 2
_STDERR_KEEP = 8192
# When the engine cannot start an exec (the runtime refused: a fork bomb filled
# the pids limit, ...) it writes its error as text where the first frame
# would be.
_ENGINE_EXEC_ERROR = b"OCI runtime"


class StreamDemux:
    """Docker's multiplexed stream (attach or exec without a TTY) taken apart.

    Each chunk comes behind an 8-byte header: stream (1 stdout, 2 stderr)
    and length.
    """

    HEADER = struct.Struct(">BxxxL")

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data):
        """``[(stream, bytes), ...]`` for every whole chunk received so far."""
        buf = self._buf
        buf += data
        out = []
        pos = 0
        size_of_header = self.HEADER.size
        while len(buf) - pos >= size_of_header:
            stream, size = self.HEADER.unpack_from(buf, pos)
            if len(buf) - pos - size_of_header < size:
                break
            out.append((stream, bytes(buf[pos + size_of_header:pos + size_of_header + size])))
            pos += size_of_header + size
        del buf[:pos]
        return out


def readable(sock, timeout):
    """Whether ``sock`` has bytes (or its end) to read within ``timeout`` s.

    poll, not select: select() cannot watch a descriptor numbered 1024 or
    more, which a kernel with many instances and a raised limit may hand out.
    """
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select([sock], [], [], timeout)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(math.ceil(timeout * 1000)))


def close_quietly(sock, keepalive=None):
    """Close a raw socket and whatever the backend keeps alive behind it."""
    for thing in (sock, keepalive):
        if thing is None:
            continue
        try:
            thing.close()
        except Exception:  # closing must never fail a cell
            pass


class ConnectionClosed(AgentError):
    """The attach stream ended: the container stopped or the engine went away."""


class AgentConnection:
    """Frames to and from one container's agent.

    ``sock`` is the raw socket of an exec with stdin, stdout and stderr (no
    TTY), so Docker prefixes each chunk with an 8-byte header naming the
    stream. The agent's frames come on stdout; stderr (the relay's) is kept,
    the last few KB, to explain a failure.
    """

    def __init__(self, sock, keepalive=None):
        self.sock = sock
        self._send_lock = threading.Lock()  # a control request may come from another thread
        self._mux = StreamDemux()
        self._frames = FrameReader()
        self._ready = []
        self._keepalive = keepalive  # what the backend keeps alive behind sock
        self.agent_stderr = bytearray()
        self.closed = False
        self._head = b""  # the stdout bytes before the first frame (a few), to explain garbage

    def send(self, header, payload=b""):
        data = encode(header, payload)
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except OSError as exc:
            self.closed = True
            raise ConnectionClosed("cannot write to the container: %s" % exc)

    def recv(self, timeout=None):
        """The next frame, or None when timeout passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready:
                return self._ready.pop(0)
            if self.closed:
                raise ConnectionClosed("the container's stream ended")
            if timeout is not None:
                wait = deadline - time.monotonic()
                if not readable(self.sock, max(0.0, wait)):
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

    def drain(self):
        """Whether the connection is fit for the next cell: open, nothing waiting.

        A real agent sends nothing between cells, so whatever waits (the end
        of a cell this kernel gave up on, a late answer, an agent flooding us)
        makes the connection suspect: it is closed unread, and the next cell
        opens a fresh one. Nothing is ever read between cells.
        """
        if not self.closed and not self._ready:
            try:
                waiting = readable(self.sock, 0)
            except (OSError, ValueError):
                waiting = True
            if not waiting:
                return True
        self.close()
        return False

    def _demux(self, data):
        for stream, chunk in self._mux.feed(data):
            if stream == STDOUT:
                if self._head is not None and len(self._head) < 512:
                    self._head += chunk[:512]
                self._frames.feed(chunk)
            elif stream == STDERR:
                self.agent_stderr += chunk
                del self.agent_stderr[:-_STDERR_KEEP]
        try:
            frames = self._frames.frames()
        except ProtocolError as exc:
            self.closed = True
            head, self._head = self._head, None
            if head is not None and head.startswith(_ENGINE_EXEC_ERROR):
                raise AgentError("the engine could not start a process in the container (%s); "
                                 "restart the instance"
                                 % plain_text(head.decode("utf-8", "replace").strip()))
            raise AgentError("the container's agent sent garbage (%s); restart the instance" % exc)
        if frames:
            self._head = None
            self._ready.extend(frames)

    def close(self):
        self.closed = True
        close_quietly(self.sock, self._keepalive)

