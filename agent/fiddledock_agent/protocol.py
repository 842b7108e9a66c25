"""The FiddleDock agent protocol: how the notebook side and the agent talk.

Transport
---------
The agent is the container's main process (``bootstrap.py`` until it has been
sent its sources, then ``supervisor.py``), running as root with only the
capabilities it needs; cells run under the sandbox uid and cannot signal,
trace or write into it. Each client (a kernel, or a one-off control
request) gets its own byte stream: it runs ``relay.py`` with ``docker exec``
as root, and the relay hands its own stdin and stdout to the agent over the
agent's unix socket (in a folder only root may enter, so no cell process can
connect) and waits. The agent then reads that client's requests from the
exec's stdin and writes its events to the exec's stdout, so no client's
bytes can ever mix with another's, and the end of a client's stream (its
kernel died) is seen at once. No port, no container network; works against
a remote engine.

Frame
-----
Every message is one frame::

    u32 header length | u32 payload length | header (JSON, UTF-8) | payload

Lengths are big-endian. The header is a JSON object with at least ``type``;
the payload carries raw bytes (cell source, output) so that output needs no
escaping and bytes that are not UTF-8 pass through untouched.

Requests (client -> agent)
--------------------------
``boot``          first frame to a fresh container: payload is a JSON object
                  ``{module name: source}``; header has ``modules`` (load
                  order) and ``config``. Only the bootstrap reads it.
``hello``         who is there; answered by ``ready``. ``who``: a short text
                  naming the client (kernel, host), shown to other clients
                  whose cells it blocks. With ``passive: true`` (a status
                  probe) it does not count as use for idle_timeout.
``execute``       run a cell. Header: ``id`` (cell id), ``timeout`` (seconds,
                  0 = none), ``reset`` (fresh namespace first),
                  ``output_limit`` (bytes), ``stdin`` (client can answer
                  input()), ``cell_name`` (how the notebook names the cell,
                  e.g. "In[5]") and ``first_line`` (the editor's number of
                  the source's first line): tracebacks use both.
                  Payload: the source, UTF-8.
``interrupt``     KeyboardInterrupt in the running cell; ``kill: true``
                  escalates one step at once (kill its child processes, then
                  its worker; see supervisor.py). Only the cell's own client,
                  unless ``force: true`` (another kernel stopping it), which
                  is answered by ``interrupted``.
``input_reply``   header ``value`` (str) or ``error`` (str) for a pending
                  ``input_request``.
``reset``         fresh namespace (new worker process); answered by ``ready``,
                  or ``busy`` while a cell runs -- unless ``force: true``:
                  then the running cell is ended first (its client is told
                  ``reason``) and ``ready`` has ``ended`` (whose cell).
``shutdown``      stop the agent (the container then exits).

Events (agent -> client)
------------------------
``need_boot``     the bootstrap is waiting for ``boot``.
``ready``         header: ``version``, ``busy`` (a cell is running),
                  ``worker`` (pid), ``notice`` (text or null).
``busy``          the request was refused: another client's cell is running.
                  ``owner``: that client's ``who``; ``seconds``: how long.
``interrupted``   answer to a forced ``interrupt``: ``owner`` and ``seconds``
                  of the cell interrupted, or ``owner: null`` if none ran.
``stream``        header ``name`` (stdout|stderr); payload: output bytes.
``display``       a MIME bundle. Header ``parts``: ``[[mime type, length],
                  ...]``, and ``metadata`` (JSON object). Payload: the
                  parts' values one after the other, as raw bytes: images
                  and PDF as their own bytes (not base64), JSON types
                  (``application/json``, ``*+json``) as JSON text, every
                  other type as UTF-8 text. So a big image never makes a
                  big header. The metadata key ``fiddledock`` is reserved:
                  ``{"display_id", "update"}`` for display ids, or
                  ``{"clear": true, "wait"}`` (no parts) for clear_output.
``result``        like display, for the value of the cell's last expression.
``input_request`` header ``prompt``, ``password``.
``notice``        header ``text``: something the user should know (output
                  truncated, worker restarted, ...).
``done``          the cell ended. Header ``status``: ``ok``, ``error``
                  (``error`` has ``ename``, ``evalue``, ``traceback`` lines
                  and ``frames``: ``cell`` (its cell_name) or ``file``,
                  ``line``, ``name`` (function), ``lines`` ([number, text])),
                  ``interrupted`` (KeyboardInterrupt, namespace kept),
                  ``timeout`` (the time limit raised KeyboardInterrupt and it
                  stopped; ``reason``, ``error``; namespace kept) or
                  ``killed`` (``reason``: why the worker died, e.g. "exited
                  with status 3"; ``cause``: ``timeout``, ``interrupt`` or
                  null; ``state_lost``: true; its state is lost).

Limits: a header is at most ``MAX_HEADER`` bytes, a payload ``MAX_PAYLOAD``
(a display whose values would not fit is not sent), and JSON nested deeper
than the parser allows is a ``ProtocolError``. For one cell a well-behaved
agent sends at most ``output_limit`` bytes of ``stream`` payload,
``CELL_DISPLAYS`` display/result events, ``CELL_DISPLAY_BYTES`` bytes of
their payloads and ``CELL_NOTICES`` notices; the client treats an agent that
sends much more as hostile. The client may enforce tighter limits.

Nothing here is ever unpickled or evaluated: headers are JSON, payloads bytes.
This module is the single definition of the framing and of every message:
each type above has one constructor below (``MESSAGES``), which both sides
call (the bootstrap alone writes its one ``need_boot`` itself: it runs
before any module is loaded). Events for a cell get its ``id`` added by
whoever routes them. The supervisor talks to its worker with the same
messages (``execute``, ``input_reply`` to it; ``stream``, ``display``,
``result``, ``input_request``, ``done`` from it). Standard library only,
Python 3.8+.
"""

import json
import struct

VERSION = 2
# Key in a display's metadata reserved for FiddleDock's own controls (display
# ids, clear_output); the client strips it before anything reaches the page.
METADATA_KEY = "fiddledock"
HEADER = struct.Struct(">II")
# Headers are small by design (bulk data travels in payloads): a JSON text of
# 1 MiB can take ~25 MiB once parsed, a bound a notebook kernel can afford.
MAX_HEADER = 1024 * 1024
MAX_PAYLOAD = 16 * 1024 * 1024
# A request's payload (a cell's source, the agent's own sources at boot) may
# be bigger: the agent reads it from a client, the worker from the agent.
MAX_REQUEST_PAYLOAD = 256 * 1024 * 1024
# The most a well-behaved agent sends for one cell, whatever the client's
# own (lower) limits are.
CELL_DISPLAYS = 10000
CELL_DISPLAY_BYTES = 256 * 1024 * 1024
CELL_NOTICES = 100


class ProtocolError(Exception):
    """The byte stream is not a sequence of frames."""


class FrameTooLarge(ProtocolError):
    """A frame announces more bytes than the limits: the stream cannot be read on."""


def encode(header, payload=b""):
    """One frame as bytes."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(len(head), len(payload)) + head + payload


class FrameReader:
    """Incremental frame parser: feed bytes, take whole frames."""

    def __init__(self, max_header=None, max_payload=None):
        self._buf = bytearray()
        self.max_header = max_header or MAX_HEADER
        self.max_payload = max_payload or MAX_PAYLOAD

    def feed(self, data):
        self._buf += data

    def frames(self):
        """``[(header, payload), ...]`` for every complete frame buffered."""
        buf = self._buf
        out = []
        pos = 0
        while len(buf) - pos >= HEADER.size:
            hlen, plen = HEADER.unpack_from(buf, pos)
            if hlen > self.max_header or plen > self.max_payload:
                raise FrameTooLarge("frame too large (%d, %d)" % (hlen, plen))
            end = pos + HEADER.size + hlen + plen
            if len(buf) < end:
                break
            start = pos + HEADER.size
            try:
                header = json.loads(bytes(buf[start:start + hlen]))
            except ValueError as exc:
                raise ProtocolError("bad frame header: %s" % exc)
            except RecursionError:  # the C parser's own depth check, raised cleanly
                raise ProtocolError("frame header nested too deep")
            if not isinstance(header, dict):
                raise ProtocolError("frame header is not an object")
            payload = bytes(buf[start + hlen:end])
            pos = end
            out.append((header, payload))
        del buf[:pos]
        return out

    def pending(self):
        """Bytes buffered that do not yet form a whole frame."""
        return len(self._buf)


# --- the messages: one constructor per type of the catalogue above -------------
MESSAGES = {}  # type -> its constructor


def _message(constructor):
    """Register constructor as the one builder of the message type it is named after."""
    MESSAGES[constructor.__name__] = constructor
    return constructor


# Requests (client -> agent)
@_message
def boot(modules, config):
    """Payload: the JSON object ``{module name: source}``."""
    return {"type": "boot", "modules": modules, "config": config}


@_message
def hello(who, passive=False):
    header = {"type": "hello", "who": who}
    if passive:
        header["passive"] = True
    return header


@_message
def execute(cell_id=None, timeout=0, reset=False, stdin=False, cell_name=None, first_line=None,
            output_limit=None, interrupt_grace=None):
    """Payload: the cell's source, UTF-8."""
    header = {"type": "execute", "id": cell_id, "timeout": timeout, "reset": reset,
              "stdin": stdin}
    if cell_name:
        header.update(cell_name=cell_name, first_line=first_line)
    if output_limit:
        header["output_limit"] = output_limit
    if interrupt_grace is not None:
        header["interrupt_grace"] = interrupt_grace
    return header


@_message
def interrupt(cell_id=None, kill=False, force=False):
    """The own cell's client names it (``cell_id``); another client forces."""
    if force:
        return {"type": "interrupt", "force": True}
    return {"type": "interrupt", "id": cell_id, "kill": kill}


@_message
def input_reply(value=None, error=None):
    """The text typed (``value``), or why there is none (``error``)."""
    header = {"type": "input_reply"}
    if value is not None:
        header["value"] = value
    if error is not None:
        header["error"] = error
    return header


@_message
def reset(force=False, reason=None):
    header = {"type": "reset"}
    if force:
        header.update(force=True, reason=reason)
    return header


@_message
def shutdown():
    return {"type": "shutdown"}


# Events (agent -> client)
@_message
def need_boot():
    return {"type": "need_boot"}


_NOT_RESET = object()


@_message
def ready(busy, worker, notice, ended=_NOT_RESET):
    """``ended``: only in the answer to a reset (whose cell it ended, or None)."""
    header = {"type": "ready", "version": VERSION, "busy": busy, "worker": worker,
              "notice": notice}
    if ended is not _NOT_RESET:
        header["ended"] = ended
    return header


@_message
def busy(owner, seconds):
    return {"type": "busy", "owner": owner, "seconds": seconds}


@_message
def interrupted(owner=None, seconds=None):
    """``owner: None``: no cell was running."""
    header = {"type": "interrupted", "owner": owner}
    if owner is not None:
        header["seconds"] = seconds
    return header


@_message
def stream(name):
    """Payload: the output bytes."""
    return {"type": "stream", "name": name}


@_message
def display(parts, metadata):
    """Payload: the parts' values one after the other (``display.wire``)."""
    return {"type": "display", "parts": parts, "metadata": metadata}


@_message
def result(parts, metadata):
    return {"type": "result", "parts": parts, "metadata": metadata}


@_message
def input_request(prompt, password):
    return {"type": "input_request", "prompt": prompt, "password": password}


@_message
def notice(text):
    return {"type": "notice", "text": text}


@_message
def done(status, error=None, reason=None, cause=None, state_lost=False):
    header = {"type": "done", "status": status}
    if error is not None:
        header["error"] = error
    if reason is not None:
        header["reason"] = reason
    if cause is not None:
        header["cause"] = cause
    if state_lost:
        header["state_lost"] = True
    return header
