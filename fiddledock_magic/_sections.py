"""A cell's output on several instances: one section per instance, beneath one cell.

Each section is one display output (HTML, with a plain-text twin) made when
the cell starts and replaced in place by its display id as the instance's
output arrives: a header naming the instance and how it is doing, then its
stream text, rich output, notices and error, in the order they came. Display
ids work alike in JupyterLab and in notebooks run by nbclient, and keep each
section in its place whatever order the instances write in. Without a kernel
(a terminal IPython) each section is printed once, when its instance ends.

Everything shown comes from ``_safety.safe_bundle`` (rich output) or is
escaped here (text), so a container's output cannot become markup of the page.
Updates are throttled: a big section is redrawn less often, and while it runs
shows only its tail.
"""

import codecs
import html
import re
import time
import uuid

from fiddledock_agent.protocol import METADATA_KEY

from ._safety import IMAGES, safe_bundle

REFRESH = 0.2  # s between redraws of one section, at least
REDRAW_RATE = 2 * 1024 * 1024  # bytes a second a big section may cost to redraw
LIVE_TAIL = 32 * 1024  # characters of stream text shown while the instance runs

STATE_WORDS = {
    "waiting": "waiting", "running": "running", "ok": "ok", "error": "failed",
    "timeout": "timed out", "interrupted": "interrupted",
}
STATE_COLOURS = {
    "waiting": "#777", "running": "#1565c0", "ok": "#2e7d32", "error": "#c62828",
    "timeout": "#e65100", "interrupted": "#c62828",
}

_ANSI = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])|\x1b[^\[]?")
_FOREGROUND = {30: "#000", 31: "#c62828", 32: "#2e7d32", 33: "#a06000", 34: "#1565c0",
               35: "#8e24aa", 36: "#00838f", 37: "#777"}


def ansi_html(text):
    """Escaped HTML of text with ANSI colours (SGR) as spans; other escapes dropped."""
    out, colour, bold, pos = [], None, False, 0

    def chunk(piece):
        if not piece:
            return
        piece = html.escape(piece)
        style = ("color:%s;" % colour if colour else "") + ("font-weight:bold;" if bold else "")
        out.append('<span style="%s">%s</span>' % (style, piece) if style else piece)

    for match in _ANSI.finditer(text):
        chunk(text[pos:match.start()])
        pos = match.end()
        if match.group(2) != "m":
            continue
        codes = [int(c) if c.isdigit() else 0 for c in match.group(1).split(";")]
        while codes:
            code = codes.pop(0)
            if code in (38, 48):  # 256-colour or RGB: its arguments are no codes of their own
                del codes[:2 if codes[:1] == [5] else 4 if codes[:1] == [2] else 0]
            elif code == 0:
                colour, bold = None, False
            elif code == 1:
                bold = True
            elif code == 22:
                bold = False
            elif code == 39:
                colour = None
            elif 30 <= code <= 37 or 90 <= code <= 97:
                colour = _FOREGROUND[code - 60 if code >= 90 else code]
    chunk(text[pos:])
    return "".join(out)


def strip_ansi(text):
    return _ANSI.sub("", text)


def overwritten(text):
    """Text as a terminal leaves it after carriage returns: each line from its last \\r."""
    if "\r" not in text:
        return text
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
                     for line in lines)


def rich_html(data, metadata):
    """HTML for a safe bundle: its own HTML, an inline image, or its text."""
    if "text/html" in data:
        return "<div>%s</div>" % data["text/html"]
    for mime in IMAGES:
        if mime in data and mime.startswith("image/"):
            raw = "".join(data[mime].split())  # base64, as safe_bundle checked
            return '<div><img src="data:%s;base64,%s" alt="%s"></div>' % (mime, raw, mime)
    text = data.get("text/markdown") or data.get("text/latex") or data.get("text/plain", "")
    return "<pre>%s</pre>" % html.escape(text)


def _text(part):
    """A stream part's text (its chunks joined once)."""
    if len(part[2]) > 1:
        part[2][:] = ["".join(part[2])]
    return part[2][0] if part[2] else ""


class Section:
    """One instance's part of the cell: state, times and what it showed, in order."""

    def __init__(self, name, display_id):
        self.name = name
        self.display_id = display_id
        self.state = "waiting"
        self.started = None
        self.seconds = None
        self.parts = []  # ["stream", name, [text...]] | ["rich", data, metadata, id] | ["notice", text] | ["error", lines] | ["value", data, metadata]
        self.value = None
        self._decoders = {}
        self._clear_pending = False
        self.dirty = True
        self.shown_at = 0.0
        self.size = 0

    # --- what the instance sent --------------------------------------------------
    def _add(self, part):
        if self._clear_pending:
            self._clear()
        self.parts.append(part)
        self.dirty = True

    def _clear(self):
        self.parts = [p for p in self.parts if p[0] in ("notice",)]
        self._clear_pending = False
        self.dirty = True

    def stream(self, name, data):
        decoder = self._decoders.get(name)
        if decoder is None:
            decoder = self._decoders[name] = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(data)
        if not text:
            return
        self.size += len(text)
        last = self.parts[-1] if self.parts else None
        if last is not None and last[0] == "stream" and last[1] == name and not self._clear_pending:
            last[2].append(text)  # joined when drawn: no copy of the whole text per chunk
            self.dirty = True
        else:
            self._add(["stream", name, [text]])

    def finish_streams(self):
        for name, decoder in self._decoders.items():
            tail = decoder.decode(b"", final=True)
            if tail:
                self._add(["stream", name, [tail]])

    def display(self, data, metadata):
        metadata = dict(metadata or {})
        control = metadata.pop(METADATA_KEY, None)
        control = control if isinstance(control, dict) else {}
        if control.get("clear"):
            if control.get("wait"):
                self._clear_pending = True
            else:
                self._clear()
            return
        data, metadata = safe_bundle(data, metadata)
        display_id = control.get("display_id")
        display_id = display_id if isinstance(display_id, str) and display_id else None
        if control.get("update"):  # updates the outputs of that id; none: nothing, as locally
            for part in self.parts:
                if part[0] == "rich" and part[3] == display_id:
                    part[1], part[2] = data, metadata
                    self.dirty = True
            return
        self._add(["rich", data, metadata, display_id])

    def result(self, data, metadata):
        metadata = dict(metadata or {})
        metadata.pop(METADATA_KEY, None)
        data, metadata = safe_bundle(data, metadata)
        self._add(["value", data, metadata])

    def notice(self, text):
        self._add(["notice", text])

    def error(self, lines):
        self._add(["error", list(lines)])

    # --- drawing --------------------------------------------------------------------
    def header_text(self, now=None):
        words = STATE_WORDS.get(self.state, self.state)
        if self.state == "running" and self.started is not None:
            return "%s: running %.0f s" % (self.name, (now or time.monotonic()) - self.started)
        if self.seconds is not None:
            return "%s: %s (%.1f s)" % (self.name, words, self.seconds)
        return "%s: %s" % (self.name, words)

    def html(self, live=False):
        colour = STATE_COLOURS.get(self.state, "#777")
        out = ['<div style="margin:6px 0 2px 0;padding:2px 6px;border-left:4px solid %s;'
               'background:#f5f5f5;font-family:monospace;font-weight:bold" '
               'title="FiddleDock instance %s">%s</div>'
               % (colour, html.escape(self.name), html.escape(self.header_text()))]
        for part in self._visible(live):
            kind = part[0]
            if kind == "stream":
                style = "margin:0;padding:0 6px;white-space:pre-wrap;word-break:break-word"
                if part[1] == "stderr":
                    style += ";background:#fdd"
                out.append('<pre style="%s">%s</pre>' % (style, ansi_html(overwritten(_text(part)))))
            elif kind == "rich":
                out.append(rich_html(part[1], part[2]))
            elif kind == "value":
                out.append('<div style="padding:0 6px"><span style="color:#777">Out:</span>%s'
                           '</div>' % rich_html(part[1], part[2]))
            elif kind == "notice":
                out.append('<pre style="margin:0;padding:0 6px;white-space:pre-wrap;'
                           'color:#8a4b00">[fiddledock] %s</pre>' % html.escape(part[1]))
            elif kind == "error":
                out.append('<pre style="margin:0;padding:0 6px;white-space:pre-wrap;'
                           'background:#fdd">%s</pre>' % ansi_html("\n".join(part[1])))
        return '<div class="fiddledock-section">%s</div>' % "".join(out)

    def text(self, live=False):
        out = ["--- %s ---" % self.header_text()]
        for part in self._visible(live):
            kind = part[0]
            if kind == "stream":
                out.append(overwritten(_text(part)).rstrip("\n"))
            elif kind in ("rich", "value"):
                out.append(("Out: " if kind == "value" else "") + part[1].get("text/plain", ""))
            elif kind == "notice":
                out.append("[fiddledock] %s" % part[1])
            elif kind == "error":
                out.append("\n".join(part[1]))
        return "\n".join(out)

    def _visible(self, live):
        """The parts to draw; while running and big, the stream text's tail only."""
        if not live or self.size <= LIVE_TAIL:
            return self.parts
        parts, left = [], LIVE_TAIL
        for part in reversed(self.parts):
            if part[0] == "stream":
                if left <= 0:
                    continue
                text = _text(part)
                if len(text) > left:
                    part = ["stream", part[1], [text[-left:]]]
                left -= len(text)
            parts.append(part)
        parts.append(["notice", "earlier output is shown when the instance ends"])
        return list(reversed(parts))

    def bundle(self, live=False):
        return {"text/html": self.html(live), "text/plain": strip_ansi(self.text(live))}


class Sections:
    """The sections of one cell, drawn beneath it (live by display id in a kernel)."""

    def __init__(self, shell, names):
        self.shell = shell
        self.live = getattr(shell, "kernel", None) is not None
        cell = uuid.uuid4().hex[:12]
        self.sections = {name: Section(name, "fiddledock-section-%s-%d" % (cell, i))
                         for i, name in enumerate(names)}
        if self.live:
            from IPython.display import publish_display_data
            for section in self.sections.values():
                publish_display_data(section.bundle(live=True),
                                     transient={"display_id": section.display_id})
                section.dirty = False
                section.shown_at = time.monotonic()

    def __getitem__(self, name):
        return self.sections[name]

    def refresh(self):
        """Redraw running sections that changed, each at most as often as its size
        allows (and once a second for its clock); an ended one was drawn by ``end``."""
        now = time.monotonic()
        for section in self.sections.values():
            if section.state not in ("waiting", "running"):
                continue
            interval = max(REFRESH, section.size / REDRAW_RATE)
            if not section.dirty:
                if section.state == "waiting":
                    continue
                interval = max(interval, 1.0)
            if now - section.shown_at >= interval:
                self._draw(section, live=True)
                section.shown_at = now

    def _draw(self, section, live):
        section.dirty = False
        if self.live:
            from IPython.display import publish_display_data
            publish_display_data(section.bundle(live), transient={"display_id": section.display_id},
                                 update=True)
        elif not live:  # a terminal: each section once, when its instance ended
            import sys
            sys.stdout.write(section.text() + "\n")
            sys.stdout.flush()

    def end(self, name, state, seconds):
        section = self.sections[name]
        section.finish_streams()
        section.state, section.seconds = state, seconds
        section.dirty = True
        self._draw(section, live=False)
        section.shown_at = time.monotonic()
