"""``%dockerrun put`` and ``get``: files and folders between this machine and an instance.

Route: the Docker archive endpoints cannot serve an instance. Its root file
system is read-only (``put_archive`` is refused: "container rootfs is marked
read-only") and its writable places (/home/sandbox, /tmp) are tmpfs mounts,
which the archive endpoints do not see at all (``get_archive`` answers 404
for a file that exists there). So a tar stream goes through ``docker exec``
instead: the file helper (``fiddledock_agent/filehelper.py``, run as
``python3 -I -S``, so files in the working folder cannot replace its
modules) packs or unpacks it inside the container. It runs as root and takes
the instance user's identity for file access only, its real uid staying 0,
so the cell's processes can neither stop it nor write into its output.

Safety: whatever comes out of a container is hostile, helper included. An
archive from ``get`` is received whole (at most ``DockerRun.transfer_limit``
bytes, counted as they arrive), then checked and written by ``_archive``.
The copy is named after the path the user asked for, never after anything
the container reports, and an existing file or folder is replaced only with
``--force``. ``put`` sends links inside a folder as links (a host file
outside the folder is never read), refuses a folder above the size limit
before sending anything, and keeps at most ``ANSWER_LIMIT`` bytes of what
the helper answers.
"""

import contextlib
import dataclasses
import io
import json
import os
import posixpath
import socket
import stat
import tarfile
import tempfile
from typing import List

from fiddledock_agent import filehelper

from ._agent_files import filehelper_source
from ._archive import exists_error, extract, listed, shown
from ._errors import FiddleDockError, InstanceNotFound, TransferError, format_size
from ._protocol import StreamDemux, close_quietly
from ._spec import SANDBOX_HOME, SANDBOX_UID, check_name, parse_size

IO_TIMEOUT = 120.0  # seconds a transfer may stall before it is given up
GIVE_UP_GRACE = 5.0  # seconds a given-up helper has to end before its container is stopped
CHUNK = 1 << 16
ANSWER_LIMIT = 64 << 10  # bytes kept of the helper's answer (put's stdout, stderr); more: error


def helper_source():
    """The helper's text (a function, so a test can play a compromised helper)."""
    return filehelper_source()


def parse_target(text, what):
    """'NAME:PATH' -> (name, path); a clear error otherwise."""
    name, sep, path = text.partition(":")
    if not sep or not name or not path:
        raise TransferError("%s must look like NAME:PATH (e.g. alice:/home/sandbox/data.csv), "
                            "not %r" % (what, text))
    return check_name(name), path


def _too_large(what, size, limit):
    return TransferError(
        "%s is %s, more than DockerRun.transfer_limit (%s); raise it with "
        "%%config DockerRun.transfer_limit = '1g' if you mean it"
        % (what, format_size(size), format_size(limit)))


def _instance_info(manager, name):
    """The instance's ``_backend.Container``; a mistyped name is an error, never a new instance."""
    try:
        return manager.find(name)
    except InstanceNotFound:
        raise TransferError("no instance named %r in this notebook; create it first with "
                            "%%dockerrun create %s (or run a cell in it: %%%%dockerrun %s)"
                            % (name, name, name)) from None


def _runs_as_root(info):
    """Whether the container's user is root, so an exec'd root keeps its capabilities."""
    user = info.user.split(":")[0]
    return user in ("0", "root")


# --- talking to the helper -----------------------------------------------------
class _Exec:
    """The helper running in the container: a socket carrying its stdin/stdout/stderr.

    As root (real uid 0, out of the cell's reach) where the container's user
    is root; otherwise an exec'd root has no capabilities and could not take
    the sandbox user's identity, so it runs as the container's own user.
    """

    def __init__(self, backend, container_id, as_root, request, source=None):
        request = dict(request, uid=SANDBOX_UID, home=SANDBOX_HOME)
        cmd = ["python3", "-I", "-S", "-c", source or helper_source(), json.dumps(request)]
        self.backend = backend
        self.exec_id, self.sock, self._keepalive = backend.exec_socket(
            container_id, cmd, user="0" if as_root else None, workdir="/")
        self.container_id = container_id
        self.sock.settimeout(IO_TIMEOUT)
        self.stderr = bytearray()
        self._demux = StreamDemux()
        self.ended = False  # its output ended: it is done, or about to be

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False  # the helper stopped reading: its stderr says why
        except socket.timeout:
            raise TransferError("the instance stopped taking data for %d s" % IO_TIMEOUT)

    def close_stdin(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def read(self, on_stdout):
        """Read until the helper ends, giving stdout bytes to on_stdout; stderr is
        kept up to ANSWER_LIMIT, more is an error."""
        while True:
            try:
                data = self.sock.recv(CHUNK)
            except socket.timeout:
                raise TransferError("the instance sent nothing for %d s" % IO_TIMEOUT)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                self.ended = True
                return
            for kind, chunk in self._demux.feed(data):
                if kind == 1:
                    on_stdout(chunk)
                elif kind == 2:
                    self.stderr += chunk
                    if len(self.stderr) > ANSWER_LIMIT:
                        raise _flooded("messages")

    def exit_code(self):
        return self.backend.exec_exit_code(self.exec_id)

    def message(self):
        return shown(bytes(self.stderr).decode("utf-8", "replace").strip(), 500)

    def report(self):
        """The helper's JSON answer on stderr (a dict; empty if it is not one)."""
        try:
            answer = json.loads(bytes(self.stderr).decode("utf-8"))
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    def close(self):
        close_quietly(self.sock, self._keepalive)

    def outlives_us(self):
        """Closed without reading to its end: is the helper still running?

        The engine keeps copying a running exec's output after we stop
        reading, at the host's CPU cost, for as long as the helper writes;
        only a hostile image's helper floods like that, so its container is
        stopped. Ours ends within a moment of its socket closing.
        """
        if self.ended:
            return False
        try:
            if self.backend.exec_exit_code(self.exec_id, wait=GIVE_UP_GRACE) is not None:
                return False
            self.backend.kill(self.container_id)
        except FiddleDockError:
            pass  # an engine that does not answer cannot be copying either
        return True


@contextlib.contextmanager
def _helper(backend, container_id, as_root, request, name, source=None):
    """The helper's exec for one transfer; closed however the transfer ends.

    ``source``: another helper's text run the same way (the wheel installer).
    """
    proc = _Exec(backend, container_id, as_root, request, source)
    try:
        yield proc
    except TransferError as exc:
        proc.close()
        if proc.outlives_us():
            raise TransferError("%s; its file helper kept running after that, so instance %r "
                                "was stopped (its files are gone; the next cell starts it "
                                "again)" % (exc, name)) from None
        raise
    except BaseException:
        proc.close()
        proc.outlives_us()
        raise
    finally:
        proc.close()


def _flooded(what):
    return TransferError("the instance's file helper sent more than %s of %s; stopped "
                         "reading it" % (format_size(ANSWER_LIMIT), what))


# --- put ---------------------------------------------------------------------------
@dataclasses.dataclass
class PutPlan:
    """What a local file or folder will take in the archive, counted before sending."""
    size: int = 2 * filehelper.ENTRY_COST  # archive bytes (headers, blocks, end marker)
    files: int = 0
    folders: int = 0
    links: int = 0
    content: int = 0  # bytes of file contents
    left_out: List[str] = dataclasses.field(default_factory=list)  # sockets, fifos, devices


def local_plan(top):
    plan = PutPlan()
    for path, st in filehelper.walk(top):
        if not filehelper.is_plain(st):
            plan.left_out.append(path)
            continue
        plan.size += filehelper.entry_cost(st)
        if stat.S_ISLNK(st.st_mode):
            plan.links += 1
        elif stat.S_ISDIR(st.st_mode):
            plan.folders += 1
        else:
            plan.files += 1
            plan.content += st.st_size
    return plan


class _LimitedSocketWriter(io.RawIOBase):
    """tarfile writes here; bytes go to the helper, counted against the limit."""

    def __init__(self, proc, limit):
        self.proc, self.limit, self.sent, self.broken = proc, limit, 0, False

    def writable(self):
        return True

    def write(self, data):
        self.sent += len(data)
        if self.sent > self.limit:
            raise _TooLarge(self.sent)
        if not self.broken and not self.proc.send(bytes(data)):
            self.broken = True
        return len(data)


class _TooLarge(Exception):
    def __init__(self, size):
        self.size = size


def put(manager, local, target, limit, force=False, notice=print):
    """Copy a local file or folder into an instance; a one-line summary."""
    name, path = parse_target(target, "the destination")
    local_path = os.path.abspath(os.path.expanduser(local))
    if not os.path.exists(local_path):
        raise TransferError("no such file or folder here: %s" % local)
    real = os.path.realpath(local_path)  # a link named on the command line is followed
    if not (os.path.isfile(real) or os.path.isdir(real)):
        raise TransferError("%s is not a file or folder" % local)
    plan = local_plan(real)
    if plan.size > limit:
        raise _too_large(local, plan.size, limit)
    arcname = os.path.basename(local_path.rstrip(os.sep)) or "root"
    as_root = _runs_as_root(_instance_info(manager, name))
    container_id = manager.get(name, notice=notice).container_id  # started again if stopped
    answer = bytearray()

    def take(chunk):
        answer.extend(chunk)
        if len(answer) > ANSWER_LIMIT:
            raise _flooded("answer")

    with _helper(manager.backend, container_id, as_root,
                 {"mode": "put", "path": path, "name": arcname, "force": force}, name) as proc:
        writer = _LimitedSocketWriter(proc, limit)
        try:
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                filehelper.pack(tar, real, arcname, [])
        except _TooLarge as exc:
            raise _too_large(local, exc.size, limit) from None
        except OSError as exc:
            raise TransferError("cannot read %s: %s" % (exc.filename or local, exc.strerror or exc))
        proc.close_stdin()
        proc.read(take)
        code = proc.exit_code()
    if code == filehelper.EXISTS:
        raise exists_error("%s:%s" % (name, proc.report().get("exists") or path))
    if code != 0:
        raise TransferError("put into %s:%s failed: %s" % (name, shown(path), proc.message() or
                                                            "exit code %s" % code))
    try:
        where = str(json.loads(bytes(answer).decode("utf-8"))["path"])
    except (ValueError, KeyError, TypeError):
        where = path
    summary = "copied %s -> %s:%s (%s)" % (shown(local), name, shown(where), _counts(
        plan.files, plan.folders, plan.links, plan.content))
    if plan.left_out:
        summary += "; left out %d special file(s) (sockets, fifos, devices): %s" % (
            len(plan.left_out), listed(plan.left_out))
    return summary


def _counts(files, folders, links, size):
    parts = ["%d file%s" % (files, "" if files == 1 else "s")]
    if folders:
        parts.append("%d folder%s" % (folders, "" if folders == 1 else "s"))
    if links:
        parts.append("%d link%s" % (links, "" if links == 1 else "s"))
    parts.append(format_size(size))
    return ", ".join(parts)


# --- get ---------------------------------------------------------------------------
def local_destination(local, path):
    """Where the copy of PATH lands: LOCAL itself, or inside LOCAL (an existing
    folder) named after PATH's last part, never after what the container says."""
    if local.endswith(os.sep) and not os.path.isdir(local):
        raise TransferError("no such folder here: %s" % local)
    local = os.path.abspath(os.path.expanduser(local))
    if os.path.isdir(local):
        leaf = posixpath.basename(posixpath.normpath(path))
        if leaf in ("", ".", ".."):
            raise TransferError("cannot name a copy of %r after it; give the copy's new name, "
                                "e.g. %s" % (path, os.path.join(local, "copy")))
        return os.path.join(local, leaf)
    if not os.path.isdir(os.path.dirname(local)):
        raise TransferError("no such folder here: %s" % os.path.dirname(local))
    return local


def get(manager, source, local, limit, force=False):
    """Copy a file or folder out of an instance; a one-line summary."""
    name, path = parse_target(source, "the source")
    dest = local_destination(local, path)
    if os.path.lexists(dest) and not force:
        raise exists_error(dest)
    info = _instance_info(manager, name)
    if not info.running:
        raise TransferError("instance %r is not running, so it has no files (they lived in its "
                            "container's memory); run a cell in it to start it again" % name)
    spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
    received = 0

    def take(chunk):
        nonlocal received
        received += len(chunk)
        if received > limit:
            raise _TooLarge(received)
        spool.write(chunk)

    where = "%s:%s" % (name, shown(path))
    with _helper(manager.backend, info.id, _runs_as_root(info),
                 {"mode": "get", "path": path, "limit": limit}, name) as proc:
        proc.close_stdin()
        try:
            proc.read(take)
        except _TooLarge as exc:
            raise _too_large(where, exc.size, limit) from None
        code = proc.exit_code()
    with spool:
        if code == filehelper.TOO_LARGE:
            need = proc.report().get("too_large")
            raise _too_large(where, need if isinstance(need, int) else limit + 1, limit)
        if code != 0:
            raise TransferError("get from %s failed: %s" % (where, proc.message() or
                                                            "exit code %s" % code))
        report = proc.report()
        names = [n for n in report.get("left_out") or [] if isinstance(n, str)]
        spool.seek(0)
        result = extract(spool, dest, limit, force, names[:filehelper.LEFT_OUT_SHOWN])
    summary = "copied %s -> %s (%s)" % (where, shown(result.path), _counts(
        result.files, result.folders, result.links, result.bytes))
    if result.links_outside:
        summary += ("; did not create %d symbolic link(s) pointing outside it: %s"
                    % (len(result.links_outside), listed(result.links_outside)))
    if result.left_out:
        count = report.get("count")
        unnamed = count - len(names) if isinstance(count, int) and count > len(names) else 0
        summary += ("; left out %d special file(s) or name(s) with control characters: %s"
                    % (len(result.left_out) + unnamed, listed(result.left_out, unnamed)))
    return summary


def transfer_limit(config):
    return parse_size(config.transfer_limit, "DockerRun.transfer_limit")


__all__ = ["put", "get", "transfer_limit"]
