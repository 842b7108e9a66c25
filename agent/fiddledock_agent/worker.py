"""The worker: one process that holds the instance's namespace and runs cells.

It is forked by the supervisor, leads its own process group (so a kill takes
its children along), and talks to the supervisor over a socket with the
frames of ``protocol``. Its file descriptors 1 and 2 are pipes the supervisor
reads, which is how output of child processes and C code is captured; Python
level writes go over the socket instead, tagged, so stdout and stderr keep
their order.
"""

import ast
import builtins
import io
import linecache
import os
import signal
import socket
import sys
import threading
import time
import traceback

from fiddledock_agent import display as display_mod
from fiddledock_agent import protocol

CHUNK = 64 * 1024
FLUSH_DELAY = 0.02  # seconds a partial line may wait before it is sent


class Channel:
    """Frames to and from the supervisor over one socket."""

    def __init__(self, sock):
        self._sock = sock
        self._reader = protocol.FrameReader()
        self._pending = []
        self._lock = threading.Lock()

    def send(self, header, payload=b""):
        data = protocol.encode(header, payload)
        with self._lock:
            self._sock.sendall(data)

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
        self._lock = threading.RLock()
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
                self._channel.send({"type": "stream", "name": self._name},
                                   data[start:start + CHUNK])


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
        self._cond = threading.Condition()
        thread = threading.Thread(target=self._run, name="fiddledock-flush", daemon=True)
        thread.start()

    def schedule(self, stream):
        with self._cond:
            self._due.add(stream)
            self._cond.notify()

    def _run(self):
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
            time.sleep(FLUSH_DELAY)
            with self._cond:
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


class Worker:
    def __init__(self, channel):
        self.channel = channel
        self.namespace = {"__name__": "__main__", "__builtins__": builtins}
        self.count = 0
        self.stdin_allowed = False
        self.post_cell_hooks = []
        flusher = Flusher()
        self.stdout = OutputStream(channel, "stdout", 1, flusher)
        self.stderr = OutputStream(channel, "stderr", 2, flusher)
        sys.stdout, sys.stderr = self.stdout, self.stderr
        sys.stdin = StdinReader(self.ask)
        builtins.input = lambda prompt="": self.ask(prompt, False)
        builtins.display = self.display
        try:
            import getpass
            getpass.getpass = lambda prompt="Password: ", stream=None: self.ask(prompt, True)
        except ImportError:
            pass

    def flush(self):
        self.stdout.flush()
        self.stderr.flush()

    # --- what user code calls -------------------------------------------
    def ask(self, prompt, password):
        self.flush()
        if not self.stdin_allowed:
            raise EOFError("input() is not available here: the notebook frontend "
                           "cannot answer input requests (stdin is not allowed)")
        self.channel.send({"type": "input_request", "prompt": str(prompt), "password": password})
        header, _ = self.channel.recv() or ({}, b"")
        if header.get("type") != "input_reply":
            raise EOFError("input() got no answer from the notebook")
        if header.get("error"):
            raise EOFError(header["error"])
        return str(header.get("value", ""))

    def display(self, *objs, raw=False, metadata=None, **_ignored):
        self.flush()
        for obj in objs:
            data, meta = display_mod.bundle(obj, raw=raw)
            if metadata:
                meta.update(metadata)
            self.channel.send({"type": "display", "data": data, "metadata": meta})

    # --- running a cell ----------------------------------------------------
    def run_cell(self, source, filename):
        """Run source; the ``done`` header to send."""
        lines = source.splitlines(True)
        linecache.cache[filename] = (len(source), None, lines, filename)
        try:
            tree = ast.parse(source, filename, "exec")
            last = None
            if (tree.body and isinstance(tree.body[-1], ast.Expr)
                    and not _ends_with_semicolon(source)):
                last = ast.Expression(tree.body.pop().value)
            code = compile(tree, filename, "exec")
            exec(code, self.namespace)
            if last is not None:
                value = eval(compile(last, filename, "eval"), self.namespace)
                self.show_result(value)
        except KeyboardInterrupt as exc:
            self.flush()
            return {"status": "interrupted", "error": _format_error(exc, filename)}
        except BaseException as exc:  # the user's exception, reported like IPython would
            self.flush()
            return {"status": "error", "error": _format_error(exc, filename)}
        finally:
            self.flush()
        return {"status": "ok"}

    def show_result(self, value):
        if value is None:
            return
        self.namespace["_"] = value
        data, meta = display_mod.bundle(value)
        self.flush()
        self.channel.send({"type": "result", "data": data, "metadata": meta})

    def serve(self):
        while True:
            try:
                frame = self.channel.recv()
                if frame is None:
                    return
                header, payload = frame
                if header.get("type") != "execute":
                    continue
                self.count += 1
                self.stdin_allowed = bool(header.get("stdin"))
                name = "<cell %d>" % self.count
                done = self.run_cell(payload.decode("utf-8", "replace"), name)
                for hook in self.post_cell_hooks:
                    hook(self)
                done["type"] = "done"
                self.channel.send(done)
            except KeyboardInterrupt:
                # A late interrupt that arrived after the cell ended.
                continue


def _ends_with_semicolon(source):
    for line in reversed(source.splitlines()):
        stripped = line.split("#", 1)[0].strip()
        if stripped:
            return stripped.endswith(";")
    return False


def _format_error(exc, filename):
    """ename, evalue and traceback lines, without the agent's own frames."""
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell "):
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb)
    text = "".join(lines).rstrip("\n")
    return {
        "ename": type(exc).__name__,
        "evalue": str(exc),
        "traceback": text.split("\n"),
    }


def run(sock, stdout_fd, stderr_fd):
    """Entry point in the forked child: become the worker and serve."""
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    keep = {0, 1, 2, sock.fileno()}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    worker = Worker(Channel(sock))
    worker.serve()
