"""``%dockerrun install NAME PKG... [pip options]``: packages for an instance without network.

Steps: the instance says which Python and platform it has (the wheel
installer's probe, run by docker exec like the file helper); pip resolves
and downloads wheels for that here (``_wheelhouse``); the wheels the
instance lacks are copied in with ``put`` to a folder in its /tmp; the
installer runs pip there with ``--no-index`` into the user site of the home
folder (so they count against the instance's disk) and removes the folder.
The instance's network setting is never touched. The cell's worker sees the
new user site before its next cell (``fiddledock_agent.usersite``).

Whatever the instance answers is untrusted: its probe is checked by
``_wheelhouse.Target``, its pip output is shown as plain text and cut short.
"""

import os
import shutil
import tempfile
import uuid

from fiddledock_agent import wheelinstall

from . import _files, _wheelhouse
from ._agent_files import wheelinstall_source
from ._errors import TransferError, format_size, plain_text
from ._wheelhouse import InstallError

SHOWN_LINES = 200  # lines of the instance's pip output shown; the rest is counted
OUTPUT_LIMIT = 4 << 20  # bytes of it read at most: pip says far less, a flood is stopped
WHEELHOUSE = "/tmp/.fiddledock-wheels-%s"


class _Lines:
    """The instance's pip output as plain lines to progress, at most SHOWN_LINES of them."""

    def __init__(self, progress):
        self.progress, self.pending, self.shown, self.hidden = progress, b"", 0, 0
        self.received = 0

    def feed(self, chunk):
        self.received += len(chunk)
        if self.received > OUTPUT_LIMIT:
            raise TransferError("the instance's installer sent more than %s of output; "
                                "stopped reading it" % format_size(OUTPUT_LIMIT))
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self._say(line)
        if len(self.pending) > 4096:
            self._say(self.pending)
            self.pending = b""

    def _say(self, raw):
        if self.shown < SHOWN_LINES:
            self.shown += 1
            self.progress("  " + plain_text(raw.decode("utf-8", "replace").rstrip(), 300))
        else:
            self.hidden += 1

    def close(self):
        if self.pending:
            self._say(self.pending)
        if self.hidden:
            self.progress("  (%d more lines of pip output not shown)" % self.hidden)


def run_installer(backend, info, request, name, progress=None):
    """Run the wheel installer in the container; ``(exit code, its JSON answer, its text)``."""
    lines = _Lines(progress or (lambda line: None))
    with _files._helper(backend, info.id, _files._runs_as_root(info), request, name,
                        source=wheelinstall_source()) as proc:
        proc.close_stdin()
        proc.read(lines.feed)
        code = proc.exit_code()
    lines.close()
    return code, proc.report(), proc.message()


def probe(backend, info, name):
    """The instance's ``_wheelhouse.Target`` (its Python, platform, installed packages)."""
    code, answer, text = run_installer(backend, info, {"mode": "probe"}, name)
    if code != 0:
        raise InstallError("instance %r could not say which Python it has: %s"
                           % (name, text or "exit code %s" % code))
    return _wheelhouse.Target.from_probe(answer)


def resolve(words, target, progress):
    """``(wheel paths, pins)`` for the user's pip words, resolved for target."""
    request = _wheelhouse.check_words(words)
    wheels = _wheelhouse.download(request, target, progress)
    return wheels, _wheelhouse.pins(request, wheels)


def install(manager, name, words, limit, progress=print):
    """Install the packages pip words name into instance name; a one-line summary."""
    request = _wheelhouse.check_words(words)  # refused before anything runs
    try:  # a mistyped name is an error, never a new instance
        _files._instance_info(manager, name)
    except TransferError as exc:
        raise InstallError(str(exc)) from None
    info = manager.backend.inspect(manager.get(name, notice=progress).container_id)
    target = probe(manager.backend, info, name)
    wheels = _wheelhouse.download(request, target, progress)
    pins = _wheelhouse.pins(request, wheels)
    sending = _wheelhouse.needed(wheels, target)
    folder = WHEELHOUSE % uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory(prefix="fiddledock-wheels-") as tmp:
        local = os.path.join(tmp, "wheels")
        os.mkdir(local)
        for path in sending:
            shutil.copyfile(path, os.path.join(local, os.path.basename(path)))
        progress("copying %d wheel(s) into %s (%d already there)"
                 % (len(sending), name, len(wheels) - len(sending)))
        progress(_files.put(manager, local, "%s:%s" % (name, folder), limit))
    progress("installing %s in %s (no network: pip --no-index)" % (" ".join(pins), name))
    request = {"mode": "install", "wheels": folder, "requirements": pins}
    code, answer, text = run_installer(manager.backend, info, request, name, progress)
    if code == wheelinstall.NO_SPACE:
        raise InstallError(_no_space(name, answer))
    if code != 0:
        raise InstallError("installing in %s failed, nothing was installed: %s"
                           % (name, text or "exit code %s" % code))
    done = [plain_text(item, 100) for item in answer.get("installed") or []
            if isinstance(item, str)]
    if not done:
        return "%s: already installed in %s" % (", ".join(pins), name)
    return ("installed in %s: %s (import in the next cell; a module imported before keeps "
            "its old version until %%dockerrun reset %s)" % (name, " ".join(done[:20]), name))


def _no_space(name, answer):
    numbers = [answer.get(k) for k in ("need", "free", "files", "files_free")]
    if not all(isinstance(n, int) for n in numbers):
        return "instance %r has too little space for these packages; nothing was installed" \
            % name
    need, free, files, files_free = numbers
    if files > files_free and need <= free:
        room = "%d files, its home folder has room for %d more" % (files, files_free)
    else:
        room = "%s, its home folder has %s free" % (format_size(need), format_size(free))
    return ("instance %r has too little space for these packages: they take %s. Nothing was "
            "installed. Create an instance with a larger disk, e.g. %%dockerrun create NAME "
            "--disk 1g, or build an image with them (%%dockerrun image build TAG PKG...)"
            % (name, room))


__all__ = ["install", "probe", "resolve", "run_installer", "InstallError"]
