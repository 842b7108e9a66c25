"""The package's exceptions (one root, specific subclasses that carry data), and
the helpers that put errors and sizes into one-line messages."""

import difflib

from IPython.core.error import UsageError as IPythonUsageError

LABEL = "FiddleDock:"


def one_line(text):
    """A FiddleDock error as a notebook or terminal shows it: the label in bold and the
    text in the frontend's own colour, readable on any theme (red on an error's pink
    background is not). No class name: the reply's ``ename`` still carries it."""
    return ["\x1b[1m%s\x1b[0m %s" % (LABEL, text)]


class FiddleDockError(Exception):
    """Root of every error FiddleDock raises on purpose.

    IPython shows it as one short line (``_render_traceback_``), not a Python
    traceback of the magic's internals.
    """

    def _render_traceback_(self):
        return one_line(self)


class UsageError(IPythonUsageError, FiddleDockError):
    """Bad arguments to a magic: still IPython's UsageError (``ename`` "UsageError"),
    but shown as FiddleDock's other errors are. IPython prints its own UsageError
    apart (plain, on stderr); a subclass goes through ``_render_traceback_``."""


class EngineUnavailable(FiddleDockError):
    """No Docker engine answers at the configured address."""


class EngineError(FiddleDockError):
    """The engine refused a request; ``status_code`` is its HTTP status."""

    def __init__(self, status_code, explanation):
        self.status_code = status_code
        self.explanation = str(explanation)
        super().__init__(self.explanation)


class ImageNotFound(FiddleDockError):
    """The image an instance needs is not on the engine."""

    def __init__(self, image, message=None):
        self.image = image
        super().__init__(message or "image %r is not installed in Docker here; build or pull "
                         "it first" % image)


class ImageBuildError(FiddleDockError):
    """Building the default image failed."""


class InstanceNotFound(FiddleDockError):
    """No instance of that name exists; ``known``: the names that do (None: not looked up)."""

    def __init__(self, name, known=None):
        self.name = name
        self.known = None if known is None else sorted(known)
        text = "no instance named %r" % name
        if self.known is not None:
            close = difflib.get_close_matches(name, self.known, 1)
            text += "; did you mean %r?" % close[0] if close else ""
            text += (" This notebook's instances: %s" % ", ".join(self.known) if self.known
                     else "; this notebook has no instances yet")
        super().__init__(text)


class InstanceConflict(FiddleDockError):
    """The request clashes with an existing instance (e.g. another image)."""


class PoolSizeInvalid(FiddleDockError):
    """A pool size that cannot be: ``size`` is what was asked for."""

    def __init__(self, size):
        self.size = size
        super().__init__("the pool size must be 0 or more, not %d" % size)

def short_error(exc, limit=300):
    """One line about an exception, for messages.

    A FiddleDock error's own text (it is written for people); an engine's
    refusal by its explanation (docker-py's ``explanation``), not the URL;
    anything else with its type, which its text alone may not name
    (``KeyError: 'x'``).
    """
    explanation = getattr(exc, "explanation", None)
    if isinstance(exc, FiddleDockError):
        text, prefix = str(exc), ""
    elif isinstance(explanation, str) and explanation.strip():
        text, prefix = explanation, ""
    else:
        text, prefix = str(exc), "%s: " % type(exc).__name__
    lines = text.strip().splitlines()
    if not lines:
        return type(exc).__name__
    return (prefix + lines[0])[:limit]


def format_size(n):
    """Bytes for people: '512 bytes', '16.0 KiB', '1.5 GiB' (the inverse of
    ``_spec.parse_size``)."""
    if n < 1024:
        return "%d bytes" % n
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024.0
        if n < 1024 or unit == "GiB":
            return "%.1f %s" % (n, unit)


def plain_text(value, limit=200):
    """Text a container sent, safe to print: control characters out, length capped."""
    text = value if isinstance(value, str) else ""
    text = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return text


class InstanceBusy(FiddleDockError):
    """Another client's cell is running in the instance.

    ``owner``: who runs it, as that client described itself; ``seconds``:
    for how long (both as the agent reported them, None if unknown).
    """

    def __init__(self, name, owner=None, seconds=None):
        self.name = name
        self.owner = plain_text(owner) or None
        self.seconds = seconds if isinstance(seconds, (int, float)) else None
        since = " for %d s" % self.seconds if self.seconds is not None else ""
        super().__init__("instance %r is busy: %s has been running a cell in it%s. Wait for "
                         "it to finish, or stop that cell with %%dockerrun interrupt %s"
                         % (name, self.owner or "another kernel", since, name))


class InstanceLost(FiddleDockError):
    """The container stopped or vanished; its state is gone."""

    def __init__(self, name, reason):
        self.name = name
        self.reason = reason
        super().__init__("instance %r: %s" % (name, reason))


class AgentError(FiddleDockError):
    """The agent in the container did not speak the protocol."""


class MalformedEvent(AgentError):
    """An instance sent something that is not a well-formed event; its connection was dropped."""

    def __init__(self, name, problem):
        self.name = name
        self.problem = problem
        super().__init__("instance %r sent something FiddleDock cannot read (%s), so this "
                         "notebook stopped listening to it. The next cell connects again; "
                         "`%%dockerrun restart %s` starts it from scratch" % (name, problem, name))


class CellError(FiddleDockError):
    """The cell's code failed in the container.

    Rendered by IPython through ``_render_traceback_`` as the container's own
    traceback (``traceback_lines``, drawn by ``_traceback``), so the magic's
    internals never show.
    """

    def __init__(self, ename, evalue, traceback_lines):
        self.ename = ename
        self.evalue = evalue
        self.traceback_lines = list(traceback_lines)
        super().__init__("%s: %s" % (ename, evalue) if evalue else ename)

    def _render_traceback_(self):
        return list(self.traceback_lines)


class CellKilled(FiddleDockError):
    """The cell's worker was killed (timeout, memory, signal); state was lost."""

    def __init__(self, reason):
        self.reason = reason
        super().__init__(reason)

    def _render_traceback_(self):
        return one_line(self)


class CellEnded(CellKilled):
    """The cell was ended by an action on its instance (restart, delete, reset).

    ``action`` says what was done and by whom, e.g. "restarted from the panel".
    """

    def __init__(self, name, action):
        self.name = name
        self.action = action
        super().__init__("the cell was stopped because instance %r was %s; its variables "
                         "are gone" % (name, action))


class CellTimeout(CellKilled):
    """The cell ran past its time limit.

    ``traceback_lines``: where the KeyboardInterrupt stopped it, if it did.
    """

    def __init__(self, reason, traceback_lines=()):
        super().__init__(reason)
        self.traceback_lines = list(traceback_lines)

    def _render_traceback_(self):
        return self.traceback_lines + super()._render_traceback_()


class InstancesFailed(FiddleDockError):
    """A command on several instances failed on some of them; ``failed``: their names.

    Each failure was shown under its own instance already: the message is the summary.
    """

    def __init__(self, failed, summary):
        self.failed = list(failed)
        super().__init__(summary)


class TransferError(FiddleDockError):
    """``%dockerrun put`` / ``get`` could not copy the files (the message says why)."""


class UnsafeArchive(TransferError):
    """Files from a container would land outside their destination (or are devices)."""
