"""The worker: one process that holds the instance's namespace and runs cells.

It is forked by the supervisor, leads its own process group (so a kill takes
its children along), and talks to the supervisor over a socket with the
frames of ``protocol``. Its file descriptors 1 and 2 are pipes the supervisor
reads, which is how output of child processes and C code is captured; Python
level writes go over the socket instead, tagged, so stdout and stderr keep
their order.
"""

import array
import ast
import builtins
import fcntl
import io
import linecache
import os
import signal
import sys
import termios
import threading
import time
import tokenize
import traceback
import uuid

from fiddledock_agent import display as display_mod
from fiddledock_agent import hints, usersite
from fiddledock_agent import hooks as hooks_mod
from fiddledock_agent import mpl as mpl_mod
from fiddledock_agent import protocol
from fiddledock_agent import shim as shim_mod

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
        self._lock = threading.Lock()
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
    """Holds the namespace; runs cells; what user code calls (input, display)."""

    def __init__(self, channel):
        self.channel = channel
        self.namespace = {"__name__": "__main__", "__builtins__": builtins}
        self.count = 0
        self.stdin_allowed = False
        self.post_cell_hooks = []
        self.rich_events = 0  # display/result events sent in this cell
        self.rich_sent = 0  # bytes of their payloads and headers
        self.rich_dropped = 0
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
        # What ipykernel sets for a local cell, so tools colour their output
        # and never wait on a pager; --env values win.
        for key, value in (("TERM", "xterm-color"), ("CLICOLOR", "1"), ("FORCE_COLOR", "1"),
                           ("CLICOLOR_FORCE", "1"), ("PAGER", "cat"), ("GIT_PAGER", "cat")):
            os.environ.setdefault(key, value)
        hooks_mod.HOOKS.install()
        shim_mod.install(self, hooks_mod.HOOKS)
        inline = mpl_mod.Inline(self)
        inline.install(hooks_mod.HOOKS)
        self.post_cell_hooks.append(inline.after_cell)

    def flush(self):
        self.stdout.flush()
        self.stderr.flush()

    def warn(self, text):
        """One line on the cell's stderr (a repr method that failed, ...)."""
        self.stderr.write("%s\n" % text)
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

    def display(self, *objs, include=None, exclude=None, metadata=None, transient=None,
                display_id=None, raw=False, clear=False, update=False, **_ignored):
        """IPython's display(): each object's MIME bundle goes beneath the cell.

        ``display_id`` (True for a new one) returns a handle whose
        ``update()`` replaces the output in place; ``clear`` clears the
        cell's output first. Display ids and clearing travel in the reserved
        metadata key ``fiddledock`` (the renderer takes it out again).
        """
        if transient and not display_id:
            display_id = transient.get("display_id")
        if display_id is True:
            display_id = uuid.uuid4().hex
        if clear:
            self.clear_output(wait=True)
        self.flush()
        for obj in objs:
            data, meta = display_mod.bundle(obj, raw=raw, include=include, exclude=exclude,
                                            on_error=self.warn)
            if metadata:
                meta.update(metadata)
            meta.pop(RESERVED, None)
            if display_id:
                meta[RESERVED] = {"display_id": str(display_id), "update": bool(update)}
            self.send_bundle("display", data, meta)
        if display_id and not update:
            return shim_mod.DisplayHandle(str(display_id))
        return None

    def clear_output(self, wait=False):
        """IPython's clear_output(): clear the cell's output (at the next output with wait)."""
        self.flush()
        self._send_rich({"type": "display", "parts": [],
                         "metadata": {RESERVED: {"clear": True, "wait": bool(wait)}}})

    # --- running a cell ----------------------------------------------------
    def run_cell(self, source, filename):
        """Run source; the ``done`` header to send."""
        lines = source.splitlines(True)
        linecache.cache[filename] = (len(source), None, lines, filename)
        usersite.refresh()  # packages installed since the last cell
        try:
            tree = ast.parse(source, filename, "exec")
            last = None
            if (tree.body and isinstance(tree.body[-1], ast.Expr)
                    and not _ends_with_semicolon(lines[tree.body[-1].lineno - 1:])):
                last = ast.Expression(tree.body.pop().value)
            code = compile(tree, filename, "exec")
            _Guard.starting = False
            if _Guard.early:
                _Guard.early = False
                raise KeyboardInterrupt
            exec(code, self.namespace)
            if last is not None:
                value = eval(compile(last, filename, "eval"), self.namespace)
                self.show_result(value)
        except KeyboardInterrupt as exc:
            self.flush()
            return {"status": "interrupted", "error": _format_error(exc, filename)}
        except BaseException as exc:  # the user's exception, reported like IPython would
            self.flush()
            return {"status": "error",
                    "error": hints.explain(_format_error(exc, filename), exc, source)}
        finally:
            self.flush()
        return {"status": "ok"}

    def show_result(self, value):
        """The last expression's value, like IPython's Out[n] (None shows nothing)."""
        if value is None:
            return
        ns = self.namespace
        ns["___"], ns["__"], ns["_"] = ns.get("__", ""), ns.get("_", ""), value
        data, meta = display_mod.bundle(value, on_error=self.warn)
        meta.pop(RESERVED, None)
        self.flush()
        self.send_bundle("result", data, meta)

    def send_bundle(self, kind, data, meta):
        """A display or result event, within the size limits for rich output."""
        parts, payload = display_mod.wire(data)
        header = {"type": kind, "parts": parts, "metadata": meta}
        if len(payload) > MAX_BUNDLE:
            self.warn("[fiddledock] an output of %.1f MB was not shown: one output may "
                      "have at most %d MB" % (len(payload) / 1e6, MAX_BUNDLE >> 20))
            return
        head = len(protocol.encode(header))
        if head > protocol.MAX_HEADER:
            self.warn("[fiddledock] an output was not shown: its metadata is larger than "
                      "%d KB" % (protocol.MAX_HEADER >> 10))
            return
        self._send_rich(header, payload, head)

    def _send_rich(self, header, payload=b"", head=0):
        """Within the most one cell sends (protocol.CELL_DISPLAYS, CELL_DISPLAY_BYTES).

        The notebook side drops what passes its own, lower limits, and says so.
        """
        size = len(payload) + head
        if (self.rich_events >= protocol.CELL_DISPLAYS
                or self.rich_sent + size > protocol.CELL_DISPLAY_BYTES):
            if not self.rich_dropped:
                self.warn("[fiddledock] display output stopped: this cell sent %d displays or "
                          "%d MB of them, the most one cell may send"
                          % (protocol.CELL_DISPLAYS, protocol.CELL_DISPLAY_BYTES >> 20))
            self.rich_dropped += 1
            return
        self.rich_events += 1
        self.rich_sent += size
        self.channel.send(header, payload)

    def after_cell(self):
        """Post-cell hooks (figures still open, ...); a failing hook never loses the cell's end."""
        for hook in self.post_cell_hooks:
            try:
                hook(self)
            except Exception as exc:
                self.warn("fiddledock: after the cell: %s: %s" % (type(exc).__name__, exc))
        self.flush()

    def serve(self):
        while True:
            try:
                _Guard.waiting, _Guard.starting, _Guard.early = True, False, False
                frame = self.channel.recv()
                _Guard.waiting = False
                if frame is None:
                    return
                header, payload = frame
                if header.get("type") != "execute":
                    continue
                _Guard.starting = True
                self.count += 1
                self.stdin_allowed = bool(header.get("stdin"))
                self.rich_events = self.rich_sent = self.rich_dropped = 0
                name = "<cell %d>" % self.count
                CELL_LABELS[name] = _cell_label(header, name)
                done = self.run_cell(payload.decode("utf-8", "replace"), name)
                self.after_cell()
                done["type"] = "done"
                self.channel.send(done)
            except KeyboardInterrupt:
                # A late interrupt that arrived after the cell ended.
                continue


RESERVED = protocol.METADATA_KEY
# One output must fit a frame's payload.
MAX_BUNDLE = protocol.MAX_PAYLOAD


def _ends_with_semicolon(lines):
    """Whether the last statement (its lines) ends with ';': IPython then shows no Out[n]."""
    last = None
    try:
        for tok in tokenize.generate_tokens(iter(lines).__next__):
            if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE,
                                tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
                last = tok
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.type == tokenize.OP and last.string == ";"


# "<cell 3>" -> (the name the notebook shows for that cell, e.g. "In[5]", and
# the editor's line number of the cell's first line): tracebacks point there.
CELL_LABELS = {}
CONTEXT = 2  # lines shown before and after a cell's failing line, as IPython does


def _cell_label(header, filename):
    label = header.get("cell_name")
    first = header.get("first_line")
    if not isinstance(label, str) or not 0 < len(label) <= 40:
        label = filename
    if type(first) is not int or not 0 < first < 1000000:
        first = 1
    return label, first


def _frame(filename, lineno, name):
    """One traceback frame as the notebook renders it: a cell's with editor lines around it."""
    if filename in CELL_LABELS and isinstance(lineno, int):
        label, first = CELL_LABELS[filename]
        lines = []
        for n in range(max(1, lineno - CONTEXT), lineno + CONTEXT + 1):
            text = linecache.getline(filename, n)
            if text:
                lines.append([n + first - 1, text.rstrip("\r\n")[:500]])
        return {"cell": label, "line": lineno + first - 1, "name": name, "lines": lines}
    text = linecache.getline(filename, lineno).strip() if isinstance(lineno, int) else ""
    return {"file": filename[:500], "line": lineno if isinstance(lineno, int) else 0,
            "name": name, "lines": [[lineno, text[:500]]] if text else []}


def _frames(exc, stack):
    frames = [_frame(f.filename, f.lineno, f.name) for f in stack[-100:]]
    if isinstance(exc, SyntaxError) and exc.filename:
        frames.append(_frame(exc.filename, exc.lineno, None))
    return frames


def _format_error(exc, filename):
    """ename, evalue, traceback lines and frames, without the agent's own frames."""
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell "):
        tb = tb.tb_next
    report = traceback.TracebackException(type(exc), exc, tb)
    # Frames of the agent (the SIGINT handler that raised KeyboardInterrupt,
    # display() internals) mean nothing to the user.
    report.stack = traceback.StackSummary.from_list(
        [f for f in report.stack if not f.filename.startswith("<fiddledock_agent/")])
    text = "".join(report.format()).rstrip("\n")
    return {
        "ename": type(exc).__name__,
        # A SyntaxError's frames say where: its value is the message alone.
        "evalue": str(exc.msg) if isinstance(exc, SyntaxError) else str(exc),
        "traceback": text.split("\n"),
        "frames": _frames(exc, report.stack),
    }


# --- process and signal setup --------------------------------------------------
# SIGINT (a timeout, the notebook's interrupt button) raises KeyboardInterrupt
# only inside the cell's code: one raised while the worker is halfway through
# writing a frame would corrupt its channel, and one raised while it sends the
# cell's end would lose that end.


# A worker inside os.system() ignores SIGINT at the C level, so the supervisor
# also sends NUDGE, which waits until the call returns and then acts as the
# SIGINT the code's own Python-level handler would have got.
NUDGE = getattr(signal, "SIGRTMIN", 34) + 4


class _Guard:
    pid = None  # the worker's pid: a process made by os.fork() in a cell differs
    main = None  # the main thread, where signal handlers run
    sock = None
    worker = None
    sending = False  # the main thread is writing a frame
    pending = False  # a SIGINT came while it was
    waiting = False  # the main thread waits for the next cell
    starting = False  # ... or has its execute request but runs none of its code yet
    early = False  # a SIGINT came for a cell whose code had not started: raised when it does


def _cell_requested():
    """Whether an execute request is in the channel, not yet read."""
    channel = _Guard.worker.channel if _Guard.worker is not None else None
    if channel is None or channel._pending or channel._reader.pending():
        return channel is not None
    count = array.array("i", [0])
    try:
        fcntl.ioctl(_Guard.sock.fileno(), termios.FIONREAD, count)
    except OSError:
        return False
    return count[0] > 0


def _in_cell_code(frame):
    while frame is not None:
        if frame.f_code.co_filename.startswith("<cell "):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame):
    if _Guard.sending:
        _Guard.pending = True
    elif _in_cell_code(frame):
        raise KeyboardInterrupt
    elif _Guard.starting or (_Guard.waiting and _cell_requested()):
        _Guard.early = True  # the interrupt came with the cell: it ends it as it starts
    # else: no cell code is running (it is finishing): nothing to interrupt


def _on_nudge(signum, frame):
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # not when the code chose SIG_IGN itself
        handler(signal.SIGINT, frame)


class _GuardedChannel(Channel):
    """The channel, with sends a KeyboardInterrupt cannot cut in half."""

    def send(self, header, payload=b""):
        if os.getpid() != _Guard.pid:
            return  # a forked child: the channel is the worker's alone
        if threading.get_ident() != _Guard.main:
            return super().send(header, payload)
        _Guard.sending = True
        try:
            super().send(header, payload)
        finally:
            _Guard.sending = False
        if _Guard.pending:
            _Guard.pending = False
            if _in_cell_code(sys._getframe(1)):
                raise KeyboardInterrupt

    def recv(self):
        if os.getpid() != _Guard.pid:
            _child_exit()  # a forked child came back from the cell's code: it is done
        return super().recv()


def _child_exit(code=0):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _no_input(prompt=""):
    raise EOFError("input() is not available in a process forked by the cell")


def _after_fork_in_child():
    """A cell called os.fork() (or multiprocessing did): keep the child off the channel.

    Its output goes to fds 1 and 2, the pipes the supervisor reads for every
    child process, so it is still shown.
    """
    _Guard.pending = _Guard.sending = False
    try:
        os.close(_Guard.sock.detach())
    except OSError:
        pass
    out, err = [io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                 errors="surrogateescape", line_buffering=True)
                for fd in (1, 2)]
    sys.stdout, sys.stderr = out, err
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    builtins.input = _no_input
    worker = _Guard.worker
    if worker is not None:
        worker.stdout, worker.stderr = out, err
        worker.stdin_allowed = False


def _become(identity, home):
    """Drop to the sandbox user (uid, gid) for good, then go home.

    After this no capability is left, so nothing the cell starts can signal,
    trace or write into the supervisor (root) or a file helper.
    """
    if identity is not None:
        uid, gid = identity
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if home:
        try:
            os.chdir(home)
        except OSError:
            pass


def run(sock, stdout_fd, stderr_fd, identity=(None, None)):
    """Entry point in the forked child: become the worker and serve.

    ``identity``: ``((uid, gid) or None, home folder or None)``.
    """
    os.setsid()
    try:  # the OOM killer should take the worker, never the supervisor
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    signal.set_wakeup_fd(-1)  # the supervisor's; its fd is closed below
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    # As in any Python: a write to a closed pipe or socket is BrokenPipeError,
    # not the death of the worker.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(NUDGE, _on_nudge)
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
    _become(*identity)
    _Guard.pid, _Guard.main, _Guard.sock = os.getpid(), threading.get_ident(), sock
    worker = Worker(_GuardedChannel(sock))
    _Guard.worker = worker
    os.register_at_fork(after_in_child=_after_fork_in_child)
    worker.serve()
