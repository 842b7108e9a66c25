"""An archive from a container: checked whole, then written where the user said.

Whatever comes out of a container is hostile, its file helper included, so
``check_archive`` reads every member before anything is written: one
top-level entry (a placeholder: the copy is named by the caller, after the
path the user asked for); no absolute paths, no ``..``, no entry that goes
through a symbolic link, no path twice; no sparse files; hard links only to
files earlier in the archive, each counted at its full size since each is
written as a copy. Left out and named: fifos, devices, names with control
characters (newline, ESC, any C0/C1 or DEL), and symbolic links that would
resolve outside the copy (``/etc/passwd``, ``../../..``, chains of links).

``extract`` writes into a new hidden sibling of the target and renames it
into place at the end, so a refused or failed copy leaves nothing behind and
an existing target is replaced only with ``force`` (and then only that one
file or folder, never merged into). Writing never follows a link: every
folder is opened relative to its parent with ``O_NOFOLLOW``, files are
created with ``O_EXCL``, links are made last and checked again once all
exist, and the bytes written are counted against the limit as they go.
"""

import dataclasses
import os
import re
import shutil
import stat
import tarfile
import uuid
from typing import List, Tuple

from ._errors import TransferError, UnsafeArchive, format_size

CHUNK = 1 << 16
NAMES_SHOWN = 10  # names listed in a summary; the count is always complete
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# shown escaped too: lone surrogates (undecodable bytes) and bidi overrides
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def shown(text, limit=300):
    """Text from a container made safe to print: control characters as \\xNN escapes."""
    text = UNPRINTABLE.sub(lambda m: "\\x%02x" % ord(m.group()) if ord(m.group()) < 256
                           else "\\u%04x" % ord(m.group()), text)
    return text if len(text) <= limit else text[:limit] + "..."


def listed(names, unnamed=0):
    """'a, b, c and 7 more', each name escaped; unnamed: more that were not named."""
    text = ", ".join(shown(n, 200) for n in names[:NAMES_SHOWN])
    more = max(0, len(names) - NAMES_SHOWN) + unnamed
    if more:
        text += " and %d more" % more
    return text


@dataclasses.dataclass
class CheckedArchive:
    """What ``check_archive`` found: members to write and what is left out."""
    members: List[Tuple[tuple, tarfile.TarInfo]]  # (path components, member), archive order
    links_outside: List[tuple]                    # symbolic links not created
    left_out: List[str]                           # special files, control-character names
    total: int                                    # bytes the files will take, hard links included


@dataclasses.dataclass
class Extracted:
    """What ``extract`` wrote."""
    path: str
    files: int = 0
    folders: int = 0
    links: int = 0
    bytes: int = 0
    links_outside: List[str] = dataclasses.field(default_factory=list)  # 'name -> target'
    left_out: List[str] = dataclasses.field(default_factory=list)


def _parts(name, what="entry"):
    """An archive path as components; UnsafeArchive for absolute paths, '..', NUL."""
    if not name or "\x00" in name:
        raise UnsafeArchive("the archive has an %s with an empty or invalid name" % what)
    if name.startswith("/"):
        raise UnsafeArchive("the archive has an absolute path: %s" % shown(name, 200))
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive("the archive has a path with '..': %s" % shown(name, 200))
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
    """Validate every member before anything is written (see the module's text)."""
    members, kinds, links, sizes, left_out = [], {}, {}, {}, []
    top, total = None, 0
    for m in tar.getmembers():
        parts = _parts(m.name)
        if top is None:
            top = parts[0]
        elif parts[0] != top:
            raise UnsafeArchive("the archive has more than one top-level entry")
        if parts in kinds:
            raise UnsafeArchive("the archive has %s twice" % shown(m.name, 200))
        if m.issparse():
            raise UnsafeArchive("the archive has a sparse file: %s" % shown(m.name, 200))
        rel = "/".join(parts[1:])
        if any(CONTROL.search(p) for p in parts[1:]) or (m.issym() and CONTROL.search(m.linkname)):
            kinds[parts] = "left out"
            left_out.append(rel)
            continue
        if m.ischr() or m.isblk() or m.isfifo():
            kinds[parts] = "left out"
            left_out.append(rel)
            continue
        if m.isreg():
            kind = "file"
            sizes[parts] = m.size
        elif m.isdir():
            kind = "dir"
        elif m.issym():
            kind = "symlink"
            if "\x00" in m.linkname or not m.linkname:
                raise UnsafeArchive("the archive has a link with an invalid target")
            links[parts] = m.linkname
        elif m.islnk():
            source = _parts(m.linkname, "link")
            if kinds.get(source) == "left out":
                kinds[parts] = "left out"
                left_out.append(rel)
                continue
            if kinds.get(source) != "file":
                raise UnsafeArchive("the archive has a hard link to something it does not "
                                    "contain: %s -> %s"
                                    % (shown(m.name, 200), shown(m.linkname, 200)))
            kind = "hardlink"
            sizes[parts] = sizes[source]  # written as a full copy: it counts in full
        else:
            raise UnsafeArchive("the archive has an entry of unknown type: %s" % shown(m.name, 200))
        kinds[parts] = kind
        total += sizes.get(parts, 0)
        members.append((parts, m))
    if top is None:
        raise UnsafeArchive("the archive is empty")
    if total > limit:
        raise TransferError("the files would take %s, more than DockerRun.transfer_limit (%s)"
                            % (format_size(total), format_size(limit)))
    for parts, m in members:
        for i in range(1, len(parts)):
            prefix = parts[:i]
            if prefix in links:
                raise UnsafeArchive("the archive writes through a symbolic link: %s"
                                    % shown(m.name, 200))
            if kinds.get(prefix, "dir") != "dir":
                raise UnsafeArchive("the archive puts %s inside something that is not a folder"
                                    % shown(m.name, 200))
    outside = [parts for parts, target in links.items()
               if target.startswith("/") or _resolve(parts[:-1] + tuple(target.split("/")),
                                                     links, top) is None]
    return CheckedArchive(members, outside, left_out, total)


# --- writing -------------------------------------------------------------------------
def extract(fileobj, dest, limit, force=False, left_out=()):
    """Check, then write, an archive (a seekable fileobj) as ``dest``.

    ``dest`` is the full path of the copy (its folder must exist); the
    archive's top-level name is ignored. ``left_out``: names the container
    reported it did not send, for the summary.
    """
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r:")
    except tarfile.TarError as exc:
        raise UnsafeArchive("the instance sent something that is not an archive: %s"
                            % shown(str(exc)))
    dest = os.path.abspath(dest)
    parent, leaf = os.path.split(dest)
    if leaf in ("", ".", ".."):
        raise TransferError("%s cannot be the name of a copy" % shown(dest))
    with tar:
        try:
            checked = check_archive(tar, limit)
        except tarfile.TarError as exc:
            raise UnsafeArchive("the instance sent a broken archive: %s" % shown(str(exc)))
        try:
            parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            raise TransferError("no such folder here: %s" % parent) from None
        try:
            refuse_existing(parent, parent_fd, leaf, force)
            result = Extracted(dest, left_out=[leaf + "/" + n if n else leaf
                                               for n in list(left_out) + checked.left_out])
            targets = dict((parts, m.linkname) for parts, m in checked.members if m.issym())
            result.links_outside = ["%s -> %s" % ("/".join((leaf,) + parts[1:]), targets[parts])
                                    for parts in checked.links_outside]
            if not any(len(p) > 1 or p not in checked.links_outside for p, _ in checked.members):
                raise TransferError("the instance sent nothing that can be copied%s" % (
                    " (left out: %s)" % listed(result.left_out + result.links_outside)
                    if result.left_out or result.links_outside else ""))
            temp = ".%s.fiddledock-%s" % (leaf[:100], uuid.uuid4().hex[:8])
            try:
                made = _Writer(tar, parent_fd, temp, limit, result).write(checked)
                _recheck_links(os.path.join(parent, temp), made, leaf, result)
                refuse_existing(parent, parent_fd, leaf, force, remove=True)
                os.rename(temp, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            except BaseException as exc:
                _remove(parent, parent_fd, temp)  # nothing half-written stays behind
                if isinstance(exc, OSError):
                    raise TransferError("writing %s failed: %s" % (shown(dest), exc.strerror
                                                                    or exc)) from None
                if isinstance(exc, tarfile.TarError):
                    raise UnsafeArchive("the instance sent a broken archive: %s"
                                        % shown(str(exc))) from None
                raise
        finally:
            os.close(parent_fd)
    return result


def refuse_existing(parent, parent_fd, leaf, force, remove=False):
    """An existing leaf is an error without force; with force and remove, it goes."""
    try:
        os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not force:
        raise exists_error(os.path.join(parent, leaf))
    if remove:
        _remove(parent, parent_fd, leaf)


def exists_error(path):
    return TransferError("%s exists already; add --force to replace it (that one file or "
                         "folder, nothing else)" % shown(path))


def _remove(parent, parent_fd, name):
    """Remove a file, link or folder in parent; links are removed, never followed."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(os.path.join(parent, name))  # fd-based on Linux: never follows a link
    else:
        os.unlink(name, dir_fd=parent_fd)


def _open_dir(parent_fd, name):
    """A folder relative to its parent, never through a symbolic link (made if missing)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        os.mkdir(name, 0o777, dir_fd=parent_fd)
        return os.open(name, flags, dir_fd=parent_fd)


class _Writer:
    """Writes checked members under a new name in a folder; counts into ``result``."""

    def __init__(self, tar, parent_fd, name, limit, result):
        self.tar, self.parent_fd, self.name, self.limit = tar, parent_fd, name, limit
        self.result = result
        self.fds = {}
        self.made = []  # symbolic links created, as paths relative to the new entry

    def write(self, checked):
        """Write every member; the symbolic links made."""
        outside = set(checked.links_outside)
        files = dict((parts, m) for parts, m in checked.members if m.isreg())
        later = []
        try:
            for parts, m in checked.members:
                if m.isdir():
                    self.folder(parts)
                    self.result.folders += 1
                elif m.isreg() or m.islnk():
                    self.file(parts, m if m.isreg() else files[_parts(m.linkname, "link")])
                elif m.issym() and parts not in outside:
                    later.append((parts, m))
            for parts, m in later:  # links last: nothing above was written through one
                parent_fd = self.folder(parts[:-1])
                os.symlink(m.linkname, self.leaf(parts), dir_fd=parent_fd)
                self.result.links += 1
                self.made.append(parts[1:])
        finally:
            for fd in self.fds.values():
                os.close(fd)
        return self.made

    def leaf(self, parts):
        return self.name if len(parts) == 1 else parts[-1]

    def folder(self, parts):
        """fd of the folder at parts (parts[0] is the top entry, written as self.name)."""
        if not parts:
            return self.parent_fd
        if parts not in self.fds:
            parent_fd = self.folder(parts[:-1])
            self.fds[parts] = _open_dir(parent_fd, self.leaf(parts))
        return self.fds[parts]

    def file(self, parts, source):
        parent_fd = self.folder(parts[:-1])
        mode = 0o777 if source.mode & 0o111 else 0o666
        fd = os.open(self.leaf(parts), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     mode, dir_fd=parent_fd)
        with os.fdopen(fd, "wb") as out, self.tar.extractfile(source) as data:
            while True:
                chunk = data.read(CHUNK)
                if not chunk:
                    break
                self.result.bytes += len(chunk)
                if self.result.bytes > self.limit:  # whatever the check counted
                    raise TransferError(
                        "the files took more than DockerRun.transfer_limit (%s); nothing was "
                        "kept" % format_size(self.limit))
                out.write(chunk)
            try:
                os.utime(out.fileno(), (source.mtime, source.mtime))
            except (OverflowError, OSError, ValueError):
                pass
        self.result.files += 1


def _recheck_links(root, made, leaf, result):
    """Once every link exists, links that resolve outside the copy (through links
    already on this machine) are removed again and named."""
    real_root = os.path.realpath(root)
    paths = [os.path.join(root, *rel) for rel in made]
    outside = [(path, rel) for path, rel in zip(paths, made)
               if not _inside(os.path.realpath(path), real_root)]
    for path, rel in outside:  # decided first: removing one changes where others lead
        result.links_outside.append("%s -> %s" % ("/".join((leaf,) + rel), os.readlink(path)))
        os.unlink(path)
        result.links -= 1


def _inside(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
