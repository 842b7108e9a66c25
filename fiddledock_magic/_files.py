"""``%dockerrun put`` and ``get``: files and folders between this machine and an instance.

Route: the Docker archive endpoints cannot serve an instance. Its root file
system is read-only (``put_archive`` is refused: "container rootfs is marked
read-only") and its writable places (/home/sandbox, /tmp) are tmpfs mounts,
which the archive endpoints do not see at all (``get_archive`` answers 404
for a file that exists there). So a tar stream goes through ``docker exec``
instead: a short standard-library helper (``HELPER``, run as ``python3 -I``,
so files in the working folder cannot replace its modules) packs or unpacks
it inside the container, as the instance's own user.

Safety: whatever comes out of a container is treated as hostile, helper
included. An archive from ``get`` is received whole (at most
``DockerRun.transfer_limit`` bytes, counted as it arrives) and checked before
anything is written: one top-level entry; no absolute paths, no ``..``, no
entry that goes through a symbolic link; only files, folders and links; no
device files, fifos or sparse files; hard links only to files earlier in the
archive (written as copies). Symbolic links that would resolve outside the
destination (``/etc/passwd``, ``../../..``, chains of links) are not
created, and the user is told which. Writing never follows a link: every
folder is opened relative to its parent with ``O_NOFOLLOW``, files are
created with ``O_EXCL``, links are made last and checked again once all
exist. ``put`` sends links inside a folder as links (a host file outside the
folder is never read), and refuses a folder above the size limit before
sending anything.
"""

import io
import json
import os
import socket
import stat
import tarfile
import tempfile

from ._engine import StreamDemux, close_quietly
from ._errors import InstanceNotFound, TransferError, UnsafeArchive
from ._spec import check_name, parse_size

IO_TIMEOUT = 120.0  # seconds a transfer may stall before it is given up
CHUNK = 1 << 16
ENTRY_COST = 1024  # archive bytes counted per entry (header, pax header)

# Run in the container as: python3 -I -c HELPER get PATH LIMIT | put PATH LIMIT NAME
HELPER = r'''
import errno, json, os, stat, sys, tarfile

def fail(code, text):
    sys.stderr.write(text)
    sys.stderr.flush()
    os._exit(code)

def explain(exc):
    if exc.errno == errno.EROFS:
        return "read-only file system: an instance can write only under /home/sandbox and /tmp"
    if exc.errno == errno.ENOSPC:
        return "no space left in the instance (its size is set by --disk / DockerRun.disk)"
    return "%s: %s" % (exc.strerror or exc, getattr(exc, "filename", "") or "")

def entry_cost(st):
    n = 1024
    if stat.S_ISREG(st.st_mode):
        n += (st.st_size + 511) // 512 * 512
    return n

def archive_size(path):
    total = 1024 + entry_cost(os.lstat(path))
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    total += entry_cost(os.lstat(os.path.join(root, name)))
                except OSError:
                    pass
    return total

def plain(info):
    if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
        return None  # sockets, fifos, devices stay behind
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info

def get(path, limit):
    path = os.path.realpath(path)  # a link named by the user is followed, as cp does
    if not os.path.exists(path):
        fail(2, "no such file or folder in the instance: %s" % path)
    if not (os.path.isfile(path) or os.path.isdir(path)):
        fail(2, "not a file or folder: %s" % path)
    need = archive_size(path)
    if need > limit:
        fail(3, json.dumps({"too_large": need}))
    out = sys.stdout.buffer
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(path, arcname=os.path.basename(path.rstrip("/")) or "root", filter=plain)
    out.flush()

def put(dest, name):
    if os.path.isdir(dest):
        parent, final = dest, name
    else:
        parent, final = os.path.dirname(dest) or ".", os.path.basename(dest)
    if not os.path.isdir(parent):
        fail(2, "no such folder in the instance: %s" % parent)
    extra = {"filter": "tar"} if hasattr(tarfile, "data_filter") else {}
    count = 0
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        for info in tar:
            parts = info.name.split("/")
            parts[0] = final
            info.name = "/".join(parts)
            if info.islnk():
                parts = info.linkname.split("/")
                parts[0] = final
                info.linkname = "/".join(parts)
            tar.extract(info, parent, **extra)
            count += 1
    sys.stdout.write(json.dumps({"path": os.path.join(os.path.abspath(parent), final),
                                 "entries": count}))

try:
    mode, path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.chdir(os.path.expanduser("~"))
    if mode == "get":
        get(path, limit)
    else:
        put(path, sys.argv[4])
except OSError as exc:
    fail(4, explain(exc))
except (tarfile.TarError, ValueError) as exc:
    fail(5, "%s: %s" % (type(exc).__name__, exc))
'''


def human(n):
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return ("%d %s" % (n, unit)) if unit == "bytes" else ("%.1f %s" % (n, unit))
        n /= 1024.0


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
        "%%config DockerRun.transfer_limit = '1g' if you mean it" % (what, human(size), human(limit)))


# --- talking to the helper -----------------------------------------------------
class _Exec:
    """The helper running in the container: a socket carrying its stdin/stdout/stderr."""

    def __init__(self, engine, container_id, args):
        self.engine = engine
        self.exec_id, self.sock, self._keepalive = engine.exec_socket(
            container_id, ["python3", "-I", "-c", HELPER] + [str(a) for a in args])
        self.sock.settimeout(IO_TIMEOUT)
        self.stderr = bytearray()
        self._demux = StreamDemux()

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
        """Read until the helper ends, giving stdout bytes to on_stdout."""
        while True:
            try:
                data = self.sock.recv(CHUNK)
            except socket.timeout:
                raise TransferError("the instance sent nothing for %d s" % IO_TIMEOUT)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                return
            for kind, chunk in self._demux.feed(data):
                if kind == 1:
                    on_stdout(chunk)
                elif kind == 2 and len(self.stderr) < 65536:
                    self.stderr += chunk

    def exit_code(self):
        return self.engine.exec_exit_code(self.exec_id)

    def message(self):
        return bytes(self.stderr).decode("utf-8", "replace").strip()[-2000:]

    def close(self):
        close_quietly(self.sock, self._keepalive)


def _running_container(manager, name):
    try:
        info = manager.find(name)
    except InstanceNotFound:
        raise TransferError("no instance named %r in this notebook" % name) from None
    if not info.get("State", {}).get("Running"):
        raise TransferError("instance %r is not running, so it has no files (they lived in its "
                            "container's memory); run a cell in it to start it again" % name)
    return info["Id"]


# --- put ---------------------------------------------------------------------------
def _local_plan(local):
    """(archive size estimate, files, folders, links, content bytes, special paths left out)."""
    size, files, folders, links, content, left = 1024, 0, 0, 0, 0, []

    def count(path, st):
        nonlocal size, files, folders, links, content
        size += ENTRY_COST
        if stat.S_ISREG(st.st_mode):
            files += 1
            content += st.st_size
            size += (st.st_size + 511) // 512 * 512
        elif stat.S_ISDIR(st.st_mode):
            folders += 1
        elif stat.S_ISLNK(st.st_mode):
            links += 1
        else:
            left.append(path)

    count(local, os.stat(local))
    if os.path.isdir(local):
        for root, dirs, names in os.walk(local):
            for name in dirs + names:
                path = os.path.join(root, name)
                count(path, os.lstat(path))
    return size, files, folders, links, content, left


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


def put(manager, local, target, limit, notice=print):
    """Copy a local file or folder into an instance; a one-line summary."""
    name, path = parse_target(target, "the destination")
    local_path = os.path.abspath(os.path.expanduser(local))
    if not os.path.exists(local_path):
        raise TransferError("no such file or folder here: %s" % local)
    real = os.path.realpath(local_path)  # a link named on the command line is followed
    if not (os.path.isfile(real) or os.path.isdir(real)):
        raise TransferError("%s is not a file or folder" % local)
    size, files, folders, links, content, left = _local_plan(real)
    if size > limit:
        raise _too_large(local, size, limit)
    arcname = os.path.basename(local_path.rstrip(os.sep)) or "root"
    container_id = manager.get(name, notice=notice).container_id
    proc = _Exec(manager.engine, container_id, ["put", path, limit, arcname])
    try:
        writer = _LimitedSocketWriter(proc, limit)

        def plain(info):
            if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
                return None
            info.uid = info.gid = 1000
            info.uname = info.gname = ""
            return info

        try:
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.add(real, arcname=arcname, filter=plain)
        except _TooLarge as exc:
            raise _too_large(local, exc.size, limit) from None
        except OSError as exc:
            raise TransferError("cannot read %s: %s" % (exc.filename or local, exc.strerror or exc))
        proc.close_stdin()
        out = bytearray()
        proc.read(out.extend)
        code = proc.exit_code()
    finally:
        proc.close()
    if code != 0:
        raise TransferError("put into %s:%s failed: %s" % (name, path, proc.message() or
                                                            "exit code %s" % code))
    try:
        where = json.loads(bytes(out).decode("utf-8"))["path"]
    except (ValueError, KeyError, TypeError):
        where = path
    summary = "copied %s -> %s:%s (%s)" % (local, name, where,
                                          _counts(files, folders, links, content))
    if left:
        summary += "; left out %d special file(s) (sockets, fifos, devices): %s" % (
            len(left), ", ".join(left[:5]))
    return summary


def _counts(files, folders, links, size):
    parts = ["%d file%s" % (files, "" if files == 1 else "s")]
    if folders:
        parts.append("%d folder%s" % (folders, "" if folders == 1 else "s"))
    if links:
        parts.append("%d link%s" % (links, "" if links == 1 else "s"))
    parts.append(human(size))
    return ", ".join(parts)


# --- get ---------------------------------------------------------------------------
def get(manager, source, local, limit):
    """Copy a file or folder out of an instance; a one-line summary."""
    name, path = parse_target(source, "the source")
    container_id = _running_container(manager, name)
    spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
    received = 0

    def take(chunk):
        nonlocal received
        received += len(chunk)
        if received > limit:
            raise _TooLarge(received)
        spool.write(chunk)

    proc = _Exec(manager.engine, container_id, ["get", path, limit])
    try:
        proc.close_stdin()
        try:
            proc.read(take)
        except _TooLarge as exc:
            raise _too_large("%s:%s" % (name, path), exc.size, limit) from None
        code = proc.exit_code()
    finally:
        proc.close()
    with spool:
        if code == 3:
            try:
                need = json.loads(proc.message())["too_large"]
            except (ValueError, KeyError, TypeError):
                need = limit + 1
            raise _too_large("%s:%s" % (name, path), int(need), limit)
        if code != 0:
            raise TransferError("get from %s:%s failed: %s" % (name, path, proc.message() or
                                                                 "exit code %s" % code))
        spool.seek(0)
        result = extract(spool, local, limit)
    summary = "copied %s:%s -> %s (%s)" % (name, path, result["path"], _counts(
        result["files"], result["folders"], result["links"], result["bytes"]))
    if result["skipped"]:
        summary += ("; did not create %d symbolic link(s) pointing outside it: %s"
                    % (len(result["skipped"]), ", ".join(result["skipped"][:10])))
    return summary


def _parts(name, what="entry"):
    """An archive path as components; UnsafeArchive for absolute paths, '..', NUL."""
    if not name or "\x00" in name:
        raise UnsafeArchive("the archive has an %s with an empty or invalid name" % what)
    if name.startswith("/"):
        raise UnsafeArchive("the archive has an absolute path: %r" % name[:200])
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive("the archive has a path with '..': %r" % name[:200])
    if not parts:
        raise UnsafeArchive("the archive has an %s with an empty name" % what)
    return tuple(parts)


def _resolve(parts, links, top):
    """Where a path inside the archive leads, following the archive's own links.

    None if it would leave the top-level entry (or loops).
    """
    out, queue, hops = [], list(parts), 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if len(out) <= 1:
                return None
            out.pop()
            continue
        out.append(part)
        target = links.get(tuple(out))
        if target is not None:
            hops += 1
            if hops > 40 or target.startswith("/"):
                return None
            out.pop()
            queue = target.split("/") + queue
    if not out or out[0] != top:
        return None
    return tuple(out)


def check_archive(tar, limit):
    """Validate every member before anything is written: ``(top, members, skipped links)``.

    ``members`` are in archive order with their path components; symbolic
    links that would point outside are left out and listed in ``skipped``.
    """
    members, kinds, links, top, total = [], {}, {}, None, 0
    for m in tar.getmembers():
        parts = _parts(m.name)
        if top is None:
            top = parts[0]
        elif parts[0] != top:
            raise UnsafeArchive("the archive has more than one top-level entry (%r and %r)"
                                % (top, parts[0]))
        if m.ischr() or m.isblk() or m.isfifo():
            raise UnsafeArchive("the archive has a device file or fifo: %r" % m.name[:200])
        if m.issparse():
            raise UnsafeArchive("the archive has a sparse file: %r" % m.name[:200])
        if m.isreg():
            kind = "file"
            total += m.size
        elif m.isdir():
            kind = "dir"
        elif m.issym():
            kind = "symlink"
            if "\x00" in m.linkname or not m.linkname:
                raise UnsafeArchive("the archive has a link with an invalid target")
            links[parts] = m.linkname
        elif m.islnk():
            kind = "hardlink"
            if kinds.get(_parts(m.linkname, "link")) != "file":
                raise UnsafeArchive("the archive has a hard link to something it does not "
                                    "contain: %r -> %r" % (m.name[:200], m.linkname[:200]))
        else:
            raise UnsafeArchive("the archive has an entry of unknown type: %r" % m.name[:200])
        if kinds.get(parts, kind) != kind:
            raise UnsafeArchive("the archive has %r twice, as different kinds" % m.name[:200])
        kinds[parts] = kind
        members.append((parts, m))
    if top is None:
        raise UnsafeArchive("the archive is empty")
    if total > limit:
        raise TransferError("the files would take %s, more than DockerRun.transfer_limit (%s)"
                            % (human(total), human(limit)))
    for parts, m in members:
        for i in range(1, len(parts)):
            prefix = parts[:i]
            if prefix in links:
                raise UnsafeArchive("the archive writes through a symbolic link: %r" % m.name[:200])
            if kinds.get(prefix, "dir") != "dir":
                raise UnsafeArchive("the archive puts %r inside something that is not a folder"
                                    % m.name[:200])
    skipped = []
    for parts, target in links.items():
        if target.startswith("/") or _resolve(parts[:-1] + tuple(target.split("/")),
                                              links, top) is None:
            skipped.append(parts)
    return top, members, skipped


def _open_dir(parent_fd, name, create):
    """A folder relative to its parent, never through a symbolic link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeArchive("%r here is a symbolic link; not writing through it "
                                "(remove it first)" % name) from None
        raise TransferError("%r exists here and is not a folder" % name) from None
    os.mkdir(name, 0o777, dir_fd=parent_fd)
    return os.open(name, flags, dir_fd=parent_fd)


def _clear_leaf(parent_fd, name):
    """Make room for a file or link: remove an old file or link (never a folder)."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise TransferError("%r exists here as a folder; not replacing it with a file" % name)
    os.unlink(name, dir_fd=parent_fd)


def extract(fileobj, local, limit):
    """Check, then write, an archive (seekable fileobj) at ``local``.

    ``local`` an existing folder: the entry goes inside it under its own
    name; otherwise ``local`` is the new name (its folder must exist).
    """
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:")
    except tarfile.TarError as exc:
        raise UnsafeArchive("the instance sent something that is not an archive: %s" % exc)
    with tar:
        try:
            top, members, skipped = check_archive(tar, limit)
        except tarfile.TarError as exc:
            raise UnsafeArchive("the instance sent a broken archive: %s" % exc)
        if local.endswith(os.sep) and not os.path.isdir(local):
            raise TransferError("no such folder here: %s" % local)
        local = os.path.abspath(os.path.expanduser(local))
        if os.path.isdir(local):
            parent, leaf = local, top
        else:
            parent, leaf = os.path.dirname(local), os.path.basename(local)
            if not os.path.isdir(parent):
                raise TransferError("no such folder here: %s" % parent)
        if leaf in ("", ".", ".."):
            raise UnsafeArchive("the archive's top-level name %r is not usable" % leaf)
        dest = os.path.join(parent, leaf)
        counts = _write(tar, members, set(skipped), parent, leaf)
    targets = {parts: m.linkname for parts, m in members if m.issym()}
    shown = ["%s -> %s" % ("/".join((leaf,) + parts[1:]), targets[parts]) for parts in skipped]
    for path, target in _recheck_links(dest, counts.pop("made_links")):
        counts["links"] -= 1
        shown.append("%s -> %s" % (os.path.relpath(path, parent), target))
    counts["skipped"] = shown
    counts["path"] = dest
    return counts


def _write(tar, members, skipped, parent, leaf):
    counts = {"files": 0, "folders": 0, "links": 0, "bytes": 0, "made_links": []}
    root_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    fds = {}
    written = {}  # parts -> member whose data a hard link copies

    def folder(parts, create=True):
        """fd of the folder at parts (parts[0] is the top entry, named leaf here)."""
        if not parts:
            return root_fd
        if parts in fds:
            return fds[parts]
        parent_fd = folder(parts[:-1], create)
        name = leaf if len(parts) == 1 else parts[-1]
        fds[parts] = _open_dir(parent_fd, name, create)
        return fds[parts]

    def leaf_name(parts):
        return leaf if len(parts) == 1 else parts[-1]

    try:
        later = []
        for parts, m in members:
            if m.isdir():
                folder(parts)
                counts["folders"] += 1
            elif m.isreg() or m.islnk():
                source = m if m.isreg() else written[_parts(m.linkname, "link")]
                parent_fd = folder(parts[:-1])
                name = leaf_name(parts)
                _clear_leaf(parent_fd, name)
                mode = 0o777 if source.mode & 0o111 else 0o666
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode,
                             dir_fd=parent_fd)
                with os.fdopen(fd, "wb") as out, tar.extractfile(source) as data:
                    while True:
                        chunk = data.read(CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        counts["bytes"] += len(chunk)
                    try:
                        os.utime(out.fileno(), (source.mtime, source.mtime))
                    except (OverflowError, OSError, ValueError):
                        pass
                if m.isreg():
                    written[parts] = m
                counts["files"] += 1
            elif m.issym():
                later.append((parts, m))
        for parts, m in later:  # links last: nothing above was written through one
            if parts in skipped:
                continue
            parent_fd = folder(parts[:-1])
            name = leaf_name(parts)
            _clear_leaf(parent_fd, name)
            os.symlink(m.linkname, name, dir_fd=parent_fd)
            counts["links"] += 1
            counts["made_links"].append(os.path.join(*((parent, leaf) + parts[1:])))
    except OSError as exc:
        raise TransferError("writing %s failed: %s" % (os.path.join(parent, leaf),
                                                        exc.strerror or exc)) from None
    finally:
        for fd in fds.values():
            os.close(fd)
        os.close(root_fd)
    return counts


def _recheck_links(dest, made):
    """Once every link exists, links that resolve outside dest (through links
    already on this machine) are removed again; the removed ones."""
    root = os.path.realpath(dest)
    outside = [path for path in made
               if not _inside(os.path.realpath(path), root)]
    removed = []
    for path in outside:  # decided first: removing one changes where others lead
        removed.append((path, os.readlink(path)))
        os.unlink(path)
    return removed


def _inside(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def transfer_limit(config):
    return parse_size(config.transfer_limit, "DockerRun.transfer_limit")


__all__ = ["put", "get", "extract", "check_archive", "HELPER", "transfer_limit"]
