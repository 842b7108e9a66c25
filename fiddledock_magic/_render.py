"""Rendering a running cell beneath the notebook cell: the magic's CellHandler.

Output is decoded incrementally (a UTF-8 character split across chunks stays
whole; bad bytes become U+FFFD), written from the main thread (ipykernel only
routes main-thread output to the cell) and flushed at a bounded rate so a
tight print loop does not flood the frontend. Rich output (``display`` and
the cell's value) passes through ``_safety.safe_bundle`` before it reaches
the page; display ids from a container arrive prefixed with its instance
(``Instance._on_event``) and are prefixed again here, so a container can
only update its own outputs, never the notebook's or another instance's.
"""

import codecs
import getpass
import html
import sys
import time

from IPython.display import clear_output, publish_display_data

from fiddledock_agent.protocol import METADATA_KEY

from ._instance import CellHandler
from ._safety import safe_bundle

FLUSH_INTERVAL = 0.05  # seconds between forced flushes
DISPLAY_ID_PREFIX = "fiddledock-"
NOTICE_LABEL = "[fiddledock]"
# A notice in a notebook: dark text on light amber, the same on a dark theme (fixed
# colours, so the contrast is known: tests/test_words.py computes it), wrapped
# between words; a word longer than the line breaks rather than overflowing.
NOTICE_COLORS = {"text": "#1f2328", "background": "#fff8c5", "edge": "#9a6700"}
NOTICE_STYLE = ("color:%(text)s;background-color:%(background)s;"
                "border-left:4px solid %(edge)s;padding:2px 8px;margin:2px 0;"
                "white-space:pre-wrap;word-break:normal;overflow-wrap:anywhere;"
                "font-family:var(--jp-code-font-family,monospace);"
                "font-size:var(--jp-code-font-size,13px)" % NOTICE_COLORS)


def notice_html(text):
    """A notice as one HTML block; the text (possibly from a container) escaped."""
    return "<div class='fiddledock-notice' style='%s'><b>%s</b> %s</div>" % (
        NOTICE_STYLE, NOTICE_LABEL, html.escape(text))


def _can_ask(shell):
    kernel = getattr(shell, "kernel", None)
    if kernel is not None:
        return bool(getattr(kernel, "_allow_stdin", False))
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


class ContainerValue:
    """The value of a container cell's last expression, shown as Out[n].

    Holds only the MIME bundle the container sent, never the object itself.
    """

    def __init__(self, data, metadata):
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(self, include=None, exclude=None):
        return dict(self.data), dict(self.metadata)

    def __repr__(self):
        return self.data.get("text/plain", "<container value>")


class CellRenderer(CellHandler):
    def __init__(self, shell):
        self.shell = shell
        self.can_ask = _can_ask(shell)
        self.value = None
        self._decoders = {}
        self._dirty = set()  # streams written since the last flush
        self._last_flush = 0.0

    def _target(self, name):
        return sys.stderr if name == "stderr" else sys.stdout

    def stream(self, name, data):
        decoder = self._decoders.get(name)
        if decoder is None:
            decoder = self._decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(data)
        if text:
            if self._dirty and name not in self._dirty:
                self.flush()  # the other stream's text first: keeps stdout/stderr order
            self._target(name).write(text)
            self._dirty.add(name)
            now = time.monotonic()
            if now - self._last_flush >= FLUSH_INTERVAL:
                self.flush()
                self._last_flush = now

    def flush(self, final=False):
        # Each flush is a round trip to ipykernel's IO thread: only the
        # streams actually written are flushed.
        for name, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=final)
            if tail:
                self._target(name).write(tail)
                self._dirty.add(name)
            if final:
                decoder.reset()
        for name in self._dirty:
            self._target(name).flush()
        self._dirty.clear()

    def finish(self):
        self.flush(final=True)

    def display(self, data, metadata):
        self.flush()
        metadata = dict(metadata or {})
        control = metadata.pop(METADATA_KEY, None)
        control = control if isinstance(control, dict) else {}
        if control.get("clear"):
            clear_output(wait=bool(control.get("wait")))
            return
        data, metadata = safe_bundle(data, metadata)
        display_id = control.get("display_id")
        if isinstance(display_id, str) and display_id:
            # Prefixed: a container can only update displays containers made,
            # never one of the notebook's own outputs.
            publish_display_data(data, metadata,
                                 transient={"display_id": DISPLAY_ID_PREFIX + display_id},
                                 update=bool(control.get("update")))
        else:
            publish_display_data(data, metadata)

    def result(self, data, metadata):
        metadata = dict(metadata or {})
        metadata.pop(METADATA_KEY, None)
        self.value = ContainerValue(*safe_bundle(data, metadata))

    def notice(self, text):
        self.flush()
        if getattr(self.shell, "kernel", None) is not None:
            # A notebook: HTML, because a frontend breaks a text output's long
            # lines anywhere, mid-word too (JupyterLab: word-break: break-all).
            from IPython.display import publish_display_data
            publish_display_data({"text/plain": "%s %s" % (NOTICE_LABEL, text),
                                  "text/html": notice_html(text)})
            return
        sys.stderr.write("\x1b[1m%s\x1b[0m %s\n" % (NOTICE_LABEL, text))
        sys.stderr.flush()

    def progress(self, line):
        sys.stdout.write(line.rstrip("\n") + "\n")
        sys.stdout.flush()

    def ask(self, prompt, password):
        self.flush()
        if not self.can_ask:
            raise EOFError("input() cannot be answered here: this frontend does not take "
                           "typed input")
        if password:
            return getpass_prompt(prompt)
        return input(prompt)


def getpass_prompt(prompt):
    return getpass.getpass(prompt)
