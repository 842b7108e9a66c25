"""Many GET requests to one Docker engine at once, read by one thread.

The engine answers a stats request at its next sampling round (one round,
then a second's pause, then the next): requests sent a few at a time wait a
round for each few. Here every request is in flight together, each over a
socket of its own that is closed once answered (``Connection: close``), and
one selector loop reads them all, so N containers cost one round, with no
thread per container and no connection kept afterwards. At most
``MAX_IN_FLIGHT`` sockets are open at a time. Only for the transports whose
raw socket the backend can open (unix, plain tcp); the caller falls back to
docker-py for the others.
"""

import http.client
import io
import json
import selectors
import socket
import time

MAX_IN_FLIGHT = 256  # sockets open at once: far below any sane descriptor limit
MAX_ANSWER = 8 << 20  # bytes of one answer (a stats sample is a few KB, an inspect tens)
READ_SIZE = 65536


class _Answer:
    """A whole HTTP answer as http.client reads it (status line, headers, chunks)."""

    def __init__(self, data):
        self._data = bytes(data)

    def makefile(self, *args, **kwargs):
        return io.BytesIO(self._data)


def parse_answer(data):
    """``(status, JSON value or None)`` of a whole HTTP answer's bytes."""
    answer = http.client.HTTPResponse(_Answer(data))
    answer.begin()
    body = answer.read()
    try:
        value = json.loads(body) if body else None
    except ValueError:
        value = None
    return answer.status, value


def get_many(connect, paths, within, failure):
    """GET every path of ``paths`` at once: ``{path: (status, JSON value)}``.

    ``connect()`` opens a new socket to the engine; ``within``: seconds the
    whole round may take; ``failure(exc)``: the exception a path's result
    becomes when its socket fails or the round runs out of time (stored as
    that path's result, not raised).
    """
    pending = list(dict.fromkeys(paths))
    results = {}
    deadline = time.monotonic() + within
    selector = selectors.DefaultSelector()
    try:
        while pending or selector.get_map():
            while pending and len(selector.get_map()) < MAX_IN_FLIGHT:
                path = pending.pop()
                try:
                    sock = connect()
                    sock.settimeout(max(0.1, deadline - time.monotonic()))
                    sock.sendall(("GET %s HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n"
                                  % path).encode("ascii"))
                    sock.setblocking(False)
                except Exception as exc:
                    results[path] = failure(exc)
                    continue
                selector.register(sock, selectors.EVENT_READ, (path, bytearray()))
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in selector.select(min(left, 1.0)):
                path, data = key.data
                try:
                    chunk = key.fileobj.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    chunk, results[path] = b"", failure(exc)
                if chunk and len(data) + len(chunk) <= MAX_ANSWER:
                    data += chunk
                    continue
                if chunk:
                    results[path] = failure(ValueError("an answer over %d bytes" % MAX_ANSWER))
                selector.unregister(key.fileobj)
                key.fileobj.close()
                if path in results:
                    continue
                try:
                    results[path] = parse_answer(data)
                except (http.client.HTTPException, ValueError) as exc:
                    results[path] = failure(exc)
        for path in pending:
            results[path] = failure(socket.timeout("timed out"))
    finally:
        for key in list(selector.get_map().values()):
            results.setdefault(key.data[0], failure(socket.timeout("timed out")))
            key.fileobj.close()
        selector.close()
    return results
