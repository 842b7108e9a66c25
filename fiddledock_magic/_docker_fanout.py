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

import json
import selectors
import socket
import time

from ._pacing import give_way

MAX_IN_FLIGHT = 256  # sockets open at once: far below any sane descriptor limit
MAX_ANSWER = 8 << 20  # bytes of one answer (a stats sample is a few KB, an inspect tens)
READ_SIZE = 65536


def parse_answer(data):
    """``(status, JSON value or None)`` of a whole HTTP/1.1 answer's bytes.

    Read here rather than by http.client, which parses headers through the
    email package: most of a panel refresh's CPU time at a hundred rows.
    """
    head, found, body = bytes(data).partition(b"\r\n\r\n")
    if not found:
        raise ValueError("the engine's answer ended early")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _unchunked(body)
    elif b"content-length" in headers:
        body = body[:int(headers[b"content-length"])]
    try:
        return status, (json.loads(body) if body else None)
    except ValueError:
        return status, None


def _unchunked(data):
    """The body of a chunked answer (ValueError if it is cut short)."""
    parts, pos = [], 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(parts)
        if end + 2 + size > len(data):
            raise ValueError("a chunk of the engine's answer is cut short")
        parts.append(data[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


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
                except (ValueError, IndexError) as exc:
                    results[path] = failure(exc)
                give_way()  # the panel's refresh: a cell waiting for the GIL goes first
        for path in pending:
            results[path] = failure(socket.timeout("timed out"))
    finally:
        for key in list(selector.get_map().values()):
            results.setdefault(key.data[0], failure(socket.timeout("timed out")))
            key.fileobj.close()
        selector.close()
    return results
