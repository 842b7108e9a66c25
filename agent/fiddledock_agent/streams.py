"""The worker's side of its channel to the supervisor, and its sys.stdout/err/in.

``Channel`` carries frames over the worker's socket; ``OutputStream`` is
sys.stdout and sys.stderr (text goes over the channel, tagged by name, so
the two keep their order); ``StdinReader`` is sys.stdin (reading asks the
notebook). Output of child processes and C code does not pass here: fds 1
and 2 are pipes the supervisor reads.

Locks and the flush thread come from ``_thread``: with ``threading``
imported before the worker's fork, each instance held about 0.3 MiB more
(pages the fork copied that the worker and the supervisor had shared); a
cell may of course import it.
"""

import _thread
import array
import fcntl
import io
import os
import termios
import time

from fiddledock_agent import protocol

CHUNK = 64 * 1024
FLUSH_DELAY = 0.02  # seconds a partial line may wait before it is sent
PIPE_WAIT = 0.05  # longest a frame waits for child output ahead of it to be taken


class Channel:
    """Frames to and from the supervisor over one socket.

    Order with child-process output: that goes through the fd 1/2 pipes, so
    before a frame is sent, whatever the pipes still hold (written earlier)
    is left for the supervisor to take first; the supervisor reads this
    socket before the pipes. Private dups of the pipes keep this working
    when the cell's code redirects fd 1 or 2.
    """

    def __init__(self, sock):
        self._sock = sock
        self._reader = protocol.FrameReader(max_payload=protocol.MAX_REQUEST_PAYLOAD)
        self._pending = []
        self._lock = _thread.allocate_lock()
        self._pipes = []
        for fd in (1, 2):
            try:
                self._pipes.append(os.dup(fd))
            except OSError:
                pass
        self._count = array.array("i", [0])

    def _pipes_empty(self):
        for fd in self._pipes:
            try:
                fcntl.ioctl(fd, termios.FIONREAD, self._count)
            except OSError:
                continue
            if self._count[0]:
                return False
        return True

    def send(self, header, payload=b""):
        data = protocol.encode(header, payload)
        with self._lock:
            if not self._pipes_empty():
                deadline = time.monotonic() + PIPE_WAIT
                while not self._pipes_empty() and time.monotonic() < deadline:
                    time.sleep(0.0002)
            self._sock.sendall(data)

    def unread(self):
        """Whether a frame (or part of one) is here that recv() has not returned yet."""
        if self._pending or self._reader.pending():
            return True
        count = array.array("i", [0])  # not _count: a signal handler calls this
        try:
            fcntl.ioctl(self._sock.fileno(), termios.FIONREAD, count)
        except OSError:
            return False
        return count[0] > 0

    def recv(self):
        """The next frame; None when the supervisor has gone."""
        while not self._pending:
            data = self._sock.recv(CHUNK)
            if not data:
                return None
            self._reader.feed(data)
            self._pending.extend(self._reader.frames())
        return self._pending.pop(0)


class OutputStream(io.TextIOBase):
    """sys.stdout / sys.stderr: text goes to the supervisor, tagged by name.

    Whole lines (and \\r updates) go at once; a partial line waits at most
    FLUSH_DELAY, so a prompt without newline still shows while the code runs.
    """

    def __init__(self, channel, name, fd, flusher):
        super().__init__()
        self._channel = channel
        self._name = name
        self._fd = fd
        self._flusher = flusher
        self._buf = []
        self._size = 0
        self._lock = _thread.RLock()
        self.buffer = _BinaryOutput(self)

    encoding = "utf-8"
    errors = "surrogateescape"

    @property
    def name(self):
        return "<%s>" % self._name

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self._fd

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        self.write_bytes(text.encode("utf-8", "surrogateescape"))
        return len(text)

    def write_bytes(self, data):
        if not data:
            return
        with self._lock:
            self._buf.append(data)
            self._size += len(data)
            if self._size >= CHUNK or b"\n" in data or b"\r" in data:
                self.flush()
            else:
                self._flusher.schedule(self)

    def flush(self):
        with self._lock:
            if not self._buf:
                return
            data = b"".join(self._buf)
            self._buf, self._size = [], 0
            for start in range(0, len(data), CHUNK):
                self._channel.send(protocol.stream(self._name), data[start:start + CHUNK])


class _BinaryOutput:
    """sys.stdout.buffer: bytes written as they are."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, data):
        self._stream.write_bytes(bytes(data))
        return len(data)

    def flush(self):
        self._stream.flush()

    def fileno(self):
        return self._stream.fileno()


class Flusher:
    """Sends partial lines after FLUSH_DELAY from a background thread."""

    def __init__(self):
        self._due = set()
        self._lock = _thread.allocate_lock()  # guards _due
        self._idle = _thread.allocate_lock()  # held while nothing is due: the thread waits on it
        self._idle.acquire()
        _thread.start_new_thread(self._run, ())

    def schedule(self, stream):
        with self._lock:
            self._due.add(stream)
            if self._idle.locked():
                self._idle.release()

    def _run(self):
        while True:
            self._idle.acquire()  # until something is due
            time.sleep(FLUSH_DELAY)
            with self._lock:
                due, self._due = self._due, set()
            for stream in due:
                try:
                    stream.flush()
                except OSError:
                    return


class StdinReader(io.TextIOBase):
    """sys.stdin: reading asks the notebook, like input()."""

    def __init__(self, ask):
        super().__init__()
        self._ask = ask

    def readable(self):
        return True

    def readline(self, size=-1):
        return self._ask("", False) + "\n"

    def read(self, size=-1):
        return self.readline()

