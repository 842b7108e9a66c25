"""The worker: one process that holds the instance's namespace and runs cells.

It is forked by the supervisor (``processes.WorkerProcess`` sets it up),
leads its own process group (so a kill takes its children along), and talks
to the supervisor over a socket with the frames of ``protocol``
(``streams.Channel``). Its file descriptors 1 and 2 are pipes the supervisor
reads, which is how output of child processes and C code is captured; Python
level writes go over the socket instead, tagged, so stdout and stderr keep
their order.

Every instance keeps a worker while it is idle, so what only some cells
need (``pprint``, ``traceback``, ``tokenize``, ``getpass``, ...) is imported
when a cell first needs it; ``_ast`` gives the parser's node types without
the ``ast`` module.
"""

import _ast
import builtins
import os
import sys

from fiddledock_agent import display as display_mod
from fiddledock_agent import hints, usersite
from fiddledock_agent import hooks as hooks_mod
from fiddledock_agent import mpl as mpl_mod
from fiddledock_agent import protocol
from fiddledock_agent import shim as shim_mod
from fiddledock_agent import tracebacks
from fiddledock_agent.interrupts import Guard
from fiddledock_agent.streams import Flusher, OutputStream, StdinReader

RESERVED = protocol.METADATA_KEY
CELL_LINES = {}  # "<cell N>" -> its linecache entry
# One output must fit a frame's payload.
MAX_BUNDLE = protocol.MAX_PAYLOAD


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
        # What ipykernel sets for a local cell, so tools colour their output
        # and never wait on a pager; --env values win.
        for key, value in (("TERM", "xterm-color"), ("CLICOLOR", "1"), ("FORCE_COLOR", "1"),
                           ("CLICOLOR_FORCE", "1"), ("PAGER", "cat"), ("GIT_PAGER", "cat")):
            os.environ.setdefault(key, value)
        hooks_mod.HOOKS.install()
        hooks_mod.HOOKS.after_import("getpass", self._patch_getpass)
        hooks_mod.HOOKS.after_import("linecache", lambda module: module.cache.update(CELL_LINES))
        shim_mod.install(self, hooks_mod.HOOKS)
        inline = mpl_mod.Inline(self)
        inline.install(hooks_mod.HOOKS)
        self.post_cell_hooks.append(inline.after_cell)

    def _patch_getpass(self, getpass):
        getpass.getpass = lambda prompt="Password: ", stream=None: self.ask(prompt, True)

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
            raise EOFError("input() is not available here: this notebook frontend "
                           "cannot answer input requests")
        self.channel.send(protocol.input_request(str(prompt), password))
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
            import uuid
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
            self.send_bundle(protocol.display, data, meta)
        if display_id and not update:
            return shim_mod.DisplayHandle(str(display_id))
        return None

    def clear_output(self, wait=False):
        """IPython's clear_output(): clear the cell's output (at the next output with wait)."""
        self.flush()
        self._send_rich(protocol.display([], {RESERVED: {"clear": True, "wait": bool(wait)}}))

    # --- running a cell ----------------------------------------------------
    def run_cell(self, source, filename):
        """Run source; the ``done`` header to send."""
        lines = source.splitlines(True)
        remember_lines(filename, source, lines)
        usersite.refresh()  # packages installed since the last cell
        try:
            tree = compile(source, filename, "exec", _ast.PyCF_ONLY_AST)  # ast.parse
            last = None
            if (tree.body and isinstance(tree.body[-1], _ast.Expr)
                    and not _ends_with_semicolon(lines[tree.body[-1].lineno - 1:])):
                last = _ast.Expression(tree.body.pop().value)
            code = compile(tree, filename, "exec")
            Guard.starting = False
            if Guard.early:
                Guard.early = False
                raise KeyboardInterrupt
            exec(code, self.namespace)
            if last is not None:
                value = eval(compile(last, filename, "eval"), self.namespace)
                self.show_result(value)
        except KeyboardInterrupt as exc:
            self.flush()
            return protocol.done("interrupted", tracebacks.format_error(exc, filename))
        except BaseException as exc:  # the user's exception, reported like IPython would
            self.flush()
            return protocol.done("error", hints.explain(tracebacks.format_error(exc, filename),
                                                        exc, source))
        finally:
            self.flush()
        return protocol.done("ok")

    def show_result(self, value):
        """The last expression's value, like IPython's Out[n] (None shows nothing)."""
        if value is None:
            return
        ns = self.namespace
        ns["___"], ns["__"], ns["_"] = ns.get("__", ""), ns.get("_", ""), value
        data, meta = display_mod.bundle(value, on_error=self.warn)
        meta.pop(RESERVED, None)
        self.flush()
        self.send_bundle(protocol.result, data, meta)

    def send_bundle(self, message, data, meta):
        """A display or result event (``message``: its constructor), within the
        size limits for rich output."""
        parts, payload = display_mod.wire(data)
        header = message(parts, meta)
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
                Guard.waiting, Guard.starting, Guard.early = True, False, False
                frame = self.channel.recv()
                Guard.waiting = False
                if frame is None:
                    return
                header, payload = frame
                if header.get("type") != "execute":
                    continue
                Guard.starting = True
                self.count += 1
                self.stdin_allowed = bool(header.get("stdin"))
                self.rich_events = self.rich_sent = self.rich_dropped = 0
                name = "<cell %d>" % self.count
                tracebacks.CELL_LABELS[name] = tracebacks.cell_label(header, name)
                done = self.run_cell(payload.decode("utf-8", "replace"), name)
                self.after_cell()
                self.channel.send(done)
            except KeyboardInterrupt:
                # A late interrupt that arrived after the cell ended.
                continue


def remember_lines(filename, source, lines):
    """A cell's lines for tracebacks and warnings, in linecache once something imports it."""
    entry = (len(source), None, lines, filename)
    CELL_LINES[filename] = entry
    linecache = sys.modules.get("linecache")
    if linecache is not None:
        linecache.cache[filename] = entry


def _ends_with_semicolon(lines):
    """Whether the last statement (its lines) ends with ';': IPython then shows no Out[n]."""
    if not any(";" in line for line in lines):
        return False
    import tokenize
    last = None
    try:
        for tok in tokenize.generate_tokens(iter(lines).__next__):
            if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE,
                                tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
                last = tok
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.type == tokenize.OP and last.string == ";"

