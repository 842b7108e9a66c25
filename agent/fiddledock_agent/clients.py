"""The agent's clients: each one's channel, the events queued for it, dropping it.

A client (a kernel, or a one-off control request) arrives through its own
exec'd relay (see protocol.py), which hands over the exec's stdin and stdout
and then waits until it is let go. Requests are read from that stdin as they
come; events are written to that stdout without ever blocking the agent: what
the client has not read yet waits in its queue. A client that sends a bad
frame, whose stream ends, or that leaves too much unread is dropped; the
supervisor hears of it (``on_drop``) to interrupt its cell.
"""

import collections
import os
import selectors
import signal

from fiddledock_agent import notices
from fiddledock_agent import probes
from fiddledock_agent import protocol

READ_SIZE = 256 * 1024  # one read of a client's requests
MAX_CLIENTS = 64  # connected at once; more are turned away
CLIENT_QUEUE_MAX = 4 * 1024 * 1024  # events a client that runs no cell may leave unread


class Client:
    """One client's channel: the stdin and stdout of its exec'd relay.

    ``conn`` is the relay's own connection: the relay (and so the engine's
    exec, and its streams) lives until it is closed.
    """

    def __init__(self, number, conn, in_fd, out_fd):
        self.number = number
        self.conn = conn
        self.relay = probes.peer_pid(conn)
        self.in_fd = in_fd
        self.out_fd = out_fd
        os.set_blocking(in_fd, False)
        os.set_blocking(out_fd, False)
        self.reader = protocol.FrameReader(max_payload=protocol.MAX_REQUEST_PAYLOAD)
        self.queue = collections.deque()
        self.queued = 0
        self.writing = False  # registered for EVENT_WRITE
        self.gone = False
        self.who = "client %d" % number

    def close(self):
        self.gone = True
        for fd in (self.in_fd, self.out_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.conn.close()
        # The relay waits (as `sleep`) until we let go: end it, and with it
        # the engine's exec. Only if that pid is still the relay (root's).
        if self.relay and probes.uid_of(self.relay) == os.getuid():
            try:
                os.kill(self.relay, signal.SIGKILL)
            except OSError:
                pass


class Clients:
    """Every connected client, on the supervisor's selector.

    ``on_frames(client, frames)``: requests read from a client;
    ``on_drop(client)``: a client is gone; ``on_written(client)``: some of its
    queue was written (the cell's output watches this for back-pressure).
    """

    def __init__(self, selector, listener, take_client, on_frames, on_drop, on_written):
        self.selector = selector
        self.listener = listener
        self.take_client = take_client
        self.on_frames = on_frames
        self.on_drop = on_drop
        self.on_written = on_written
        self.by_fd = {}  # in_fd -> Client
        self.count = 0
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, self._on_accept)

    def __iter__(self):
        return iter(list(self.by_fd.values()))

    def _on_accept(self, _mask):
        """A relay connects: take the exec's stdin/stdout it hands over."""
        client = self.take_client(self.listener)  # bootstrap.take_client: checks and all
        if client is None:
            return
        conn, fds = client
        if len(self.by_fd) >= MAX_CLIENTS:
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        conn.setblocking(False)
        self.add(conn, *fds)

    def add(self, conn, in_fd, out_fd):
        self.count += 1
        client = Client(self.count, conn, in_fd, out_fd)
        self.by_fd[in_fd] = client
        self.selector.register(in_fd, selectors.EVENT_READ,
                               lambda mask, c=client: self._on_readable(c))
        return client

    def _on_readable(self, client):
        try:
            data = os.read(client.in_fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # its kernel is gone, or gave up on us
            self.drop(client)
            return
        client.reader.feed(data)
        try:
            frames = client.reader.frames()
        except protocol.ProtocolError as exc:
            self.send(client, protocol.notice(notices.malformed_frame(exc)))
            self.drop(client)
            return
        self.on_frames(client, frames)

    def send(self, client, header, payload=b"", bounded=True):
        """Queue one event for client and write what it takes now.

        ``bounded``: a client that leaves more than CLIENT_QUEUE_MAX unread is
        dropped (answers it does not read are not worth our memory); the
        client of the running cell is slowed down instead (back-pressure).
        """
        if client is None or client.gone:
            return
        data = protocol.encode(header, payload)
        client.queue.append(data)
        client.queued += len(data)
        if bounded and client.queued > CLIENT_QUEUE_MAX:
            self.drop(client)
            return
        self.write_out(client)

    def write_out(self, client):
        while client.queue:
            data = client.queue[0]
            try:
                n = os.write(client.out_fd, data)
            except BlockingIOError:
                break
            except OSError:  # its stream is gone
                self.drop(client)
                return
            client.queued -= n
            if n < len(data):
                client.queue[0] = data[n:]
                break
            client.queue.popleft()
        want = bool(client.queue)
        if want != client.writing:
            if want:
                self.selector.register(client.out_fd, selectors.EVENT_WRITE,
                                       lambda mask, c=client: self.write_out(c))
            else:
                self.selector.unregister(client.out_fd)
            client.writing = want
        self.on_written(client)

    def drop(self, client):
        """A client left (or misbehaved): forget it and let its relay go."""
        if client.gone:
            return
        for fd in (client.in_fd, client.out_fd):
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        self.by_fd.pop(client.in_fd, None)
        client.close()
        self.on_drop(client)

    def close_all(self):
        """At shutdown: write what each client still has queued (blocking), then close."""
        for client in self:
            try:
                os.set_blocking(client.out_fd, True)
                while client.queue:
                    os.write(client.out_fd, client.queue.popleft())
            except OSError:
                pass
            client.close()
