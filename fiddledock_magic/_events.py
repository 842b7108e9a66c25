"""What an instance sends during a cell, checked: the one place that reads agent frames.

A container may be controlled by the cell's code or run a hostile image, so
every field of every event is checked here before anything else looks at
it: types, sizes, nesting. ``read_event`` turns a raw ``(header, payload)``
into an ``Event`` whose fields have the types the rest of FiddleDock
expects, or raises ``BadEvent`` saying what was wrong. Strings come out
encodable (lone surrogates replaced), numbers finite, JSON nested at most
``MAX_DEPTH`` deep. The message catalogue is in ``fiddledock_agent.protocol``.
"""

import base64
import json
import math

from fiddledock_agent.protocol import METADATA_KEY

from ._safety import ALLOWED, IMAGES

MAX_DEPTH = 32  # JSON nesting kept in metadata and JSON outputs (ipykernel recurses on it)
MAX_JSON_PART = 1024 * 1024  # a JSON output larger than this is not parsed (JSON grows ~25x)
MAX_PARTS = 64
MAX_TEXT = 4000  # characters of a notice, prompt or reason shown
MAX_FRAMES = 100  # frames of a traceback (the agent sends the innermost ones)
DONE_STATUSES = ("ok", "error", "interrupted", "timeout", "killed")
STREAMS = ("stdout", "stderr")


class BadEvent(Exception):
    """The frame is not a well-formed event; the text says what is wrong."""


class Event:
    """One checked event. ``kind`` is its type; other attributes depend on it."""

    def __init__(self, kind, cell_id, size=0):
        self.kind = kind
        self.id = cell_id
        self.size = size  # bytes it carries (payload and metadata), for the cell's limits


class Bundle(Event):
    """A ``display`` or ``result``: parts are decoded only when shown."""

    def __init__(self, kind, cell_id, parts, payload, metadata, control, size):
        super().__init__(kind, cell_id, size)
        self._parts = parts
        self._payload = payload
        self.metadata = metadata
        self.control = control
        self.skipped = []  # why parts were left out, once decoded

    @property
    def is_new_output(self):
        """Whether it adds an output beneath the cell (not an update or a clear)."""
        return not (self.control.get("update") or self.control.get("clear"))

    def data(self):
        """The MIME bundle as Jupyter wants it (images base64, JSON parsed)."""
        data = {}
        pos = 0
        for mime, length in self._parts:
            raw = self._payload[pos:pos + length]
            pos += length
            if mime not in ALLOWED:
                continue  # never shown (see _safety): not even decoded
            if mime in IMAGES:
                data[mime] = base64.b64encode(raw).decode("ascii")
            elif mime == "application/json":
                value = _json_part(raw)
                if value is None:
                    self.skipped.append("a JSON output (%d bytes) was not shown: it is larger "
                                        "than %d KB, nested too deep or not JSON"
                                        % (length, MAX_JSON_PART >> 10))
                else:
                    data[mime] = value
            else:
                data[mime] = raw.decode("utf-8", "replace")
        return data


def _json_part(raw):
    if len(raw) > MAX_JSON_PART:
        return None
    try:
        return clean_json(json.loads(raw))
    except (ValueError, RecursionError, BadEvent):
        return None


def text(value, what, limit=None, optional=False):
    """value as an encodable str (cut to limit characters); BadEvent if it is not a str."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadEvent("%s is %s, not text" % (what, type(value).__name__))
    if limit is not None and len(value) > limit:
        value = value[:limit] + "..."
    return value.encode("utf-8", "replace").decode("utf-8")


def plain_text(value, what, optional=False):
    """text for a line of our own (a notice, a reason): no control characters but newline and tab."""
    value = text(value, what, MAX_TEXT, optional)
    if value is None:
        return None
    return "".join(c if c >= " " or c in "\n\t" else "?" for c in value)


def flag(header, key):
    value = header.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadEvent("%r is %s, not true or false" % (key, type(value).__name__))
    return value


def _depth_ok(value):
    """Whether value nests at most MAX_DEPTH deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > MAX_DEPTH:
            return False
        stack.extend((child, depth + 1) for child in item)
    return True


def clean_json(value):
    """A copy of parsed JSON a kernel can send on: strings encodable, NaN/infinity as null.

    BadEvent when nested deeper than MAX_DEPTH.
    """
    if not _depth_ok(value):
        raise BadEvent("JSON nested deeper than %d levels" % MAX_DEPTH)
    return _clean(value)


def _clean(value):  # depth already bounded: recursion is safe here
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_size(value):
    """About the bytes value took as JSON (for the cell's limits)."""
    size = 0
    stack = [value]
    while stack:
        item = stack.pop()
        size += 8
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return size


def _parts(header, payload):
    parts = header.get("parts")
    if not isinstance(parts, list):
        raise BadEvent("'parts' is %s, not a list" % type(parts).__name__)
    if len(parts) > MAX_PARTS:
        raise BadEvent("%d parts, more than %d" % (len(parts), MAX_PARTS))
    checked = []
    total = 0
    for part in parts:
        if (not isinstance(part, list) or len(part) != 2 or not isinstance(part[0], str)
                or not 0 < len(part[0]) <= 255 or type(part[1]) is not int or part[1] < 0):
            raise BadEvent("a part is not [mime type, length]")
        checked.append((part[0], part[1]))
        total += part[1]
    if total != len(payload):
        raise BadEvent("parts add up to %d bytes, the payload has %d" % (total, len(payload)))
    return checked


def _control(metadata):
    control = metadata.pop(METADATA_KEY, None)
    if control is None:
        return {}
    if not isinstance(control, dict):
        raise BadEvent("%r metadata is %s, not an object" % (METADATA_KEY, type(control).__name__))
    checked = {key: flag(control, key) for key in ("update", "clear", "wait")}
    display_id = control.get("display_id")
    if display_id is not None:
        if not isinstance(display_id, str) or not 0 < len(display_id) <= 200:
            raise BadEvent("display_id is not text of 1 to 200 characters")
        checked["display_id"] = display_id
    return checked


def _bundle(kind, cell_id, header, payload):
    parts = _parts(header, payload)
    metadata = header.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise BadEvent("%s metadata is %s, not an object" % (kind, type(metadata).__name__))
    metadata = clean_json(metadata)
    control = _control(metadata)
    size = len(payload) + _json_size(metadata)
    return Bundle(kind, cell_id, parts, payload, metadata, control, size)


def _error(value):
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadEvent("the error is %s, not an object" % type(value).__name__)
    lines = value.get("traceback")
    if lines is None:
        lines = []
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise BadEvent("the traceback is not a list of text lines")
    frames = value.get("frames")
    if frames is not None and (not isinstance(frames, list) or len(frames) > MAX_FRAMES):
        raise BadEvent("the traceback frames are not a list of at most %d" % MAX_FRAMES)
    return {"ename": text(value.get("ename"), "the exception name", 200),
            "evalue": text(value.get("evalue", ""), "the exception value", 100000),
            "traceback": [text(line, "a traceback line") for line in lines],
            "frames": None if frames is None else [_frame(f) for f in frames]}


def _line_number(value):
    if type(value) is not int or not 0 <= value < 10 ** 9:
        raise BadEvent("a traceback line number is not a number")
    return value


def _source_line(value):
    """A line of source to show: tabs as spaces, no control characters (no colours of its own)."""
    value = text(value, "a traceback source line", 500).expandtabs(4)
    return "".join(c if c >= " " and c != "\x7f" else "?" for c in value)


def _frame(value):
    """One frame of a traceback: a cell's (``cell``: its label) or a file's (``file``)."""
    if not isinstance(value, dict):
        raise BadEvent("a traceback frame is %s, not an object" % type(value).__name__)
    lines = value.get("lines") or []
    if not isinstance(lines, list) or len(lines) > 2 * MAX_FRAMES or not all(
            isinstance(pair, list) and len(pair) == 2 for pair in lines):
        raise BadEvent("a traceback frame's lines are not [number, text] pairs")
    return {"cell": _source_line(value["cell"]) if value.get("cell") is not None else None,
            "file": _source_line(value.get("file") or ""),
            "line": _line_number(value.get("line")),
            "name": _source_line(value["name"]) if value.get("name") is not None else None,
            "lines": [(_line_number(n), _source_line(line)) for n, line in lines]}


def read_event(frame):
    """The checked Event of one frame (header, payload); BadEvent if it is malformed."""
    header, payload = frame
    kind = header.get("type")
    if not isinstance(kind, str):
        raise BadEvent("the event type is %s, not text" % type(kind).__name__)
    kind = text(kind, "the event type", 40)
    cell_id = header.get("id")
    if cell_id is not None and type(cell_id) is not int:
        raise BadEvent("%s event: its cell id is %s, not a number" % (kind, type(cell_id).__name__))
    try:
        return _read(kind, cell_id, header, payload)
    except BadEvent as exc:
        raise BadEvent("%s event: %s" % (kind, exc)) from None


def _read(kind, cell_id, header, payload):
    if kind == "stream":
        name = header.get("name")
        if name not in STREAMS or not isinstance(name, str):
            raise BadEvent("the stream name is not 'stdout' or 'stderr'")
        event = Event(kind, cell_id, len(payload))
        event.name, event.data = name, payload
    elif kind in ("display", "result"):
        event = _bundle(kind, cell_id, header, payload)
    elif kind == "notice":
        event = Event(kind, cell_id)
        event.text = plain_text(header.get("text"), "the notice")
    elif kind == "input_request":
        event = Event(kind, cell_id)
        event.prompt = text(header.get("prompt", ""), "the prompt", MAX_TEXT)
        event.password = flag(header, "password")
    elif kind == "done":
        event = Event(kind, cell_id)
        event.status = header.get("status")
        if event.status not in DONE_STATUSES or not isinstance(event.status, str):
            raise BadEvent("the status is not one of %s" % ", ".join(DONE_STATUSES))
        event.error = _error(header.get("error"))
        if event.status in ("error", "interrupted") and event.error is not None:
            if not event.error["ename"]:
                raise BadEvent("the exception name is empty")
        event.reason = plain_text(header.get("reason"), "the reason", optional=True)
        event.notice = plain_text(header.get("notice"), "the notice", optional=True)
        event.cause = text(header.get("cause"), "the cause", 40, optional=True)
        event.state_lost = flag(header, "state_lost")
    else:  # busy, and types this version does not know (ignored)
        event = Event(kind, cell_id, len(payload))
    return event


def done_header(event):
    """The checked ``done`` event as the header dict the magic reads."""
    header = {"type": "done", "status": event.status, "reason": event.reason,
              "notice": event.notice, "cause": event.cause, "state_lost": event.state_lost}
    if event.error is not None:
        header["error"] = event.error
    return header
