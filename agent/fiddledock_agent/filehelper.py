"""Packs or unpacks a tar stream for ``%dockerrun get`` / ``put`` inside an instance.

Not part of the booted agent (it is not in ``MODULES``): the notebook side
runs this file's text through ``docker exec`` as root, as
``python3 -I -S -c <text> REQUEST`` (REQUEST is JSON: mode, path, limit,
uid, home, and for put name and force). Standard library only, Python 3.8+;
it imports nothing from the notebook side, which may import its small pure
functions (``walk``, ``entry_cost``, ``pack``) instead of copying them.

Before it touches any file it drops to the sandbox uid for file access and
ownership while its real and saved uid stay 0: the cell's processes (that
uid) can then neither signal nor trace it, nor open its fds or memory in
/proc, so they cannot stop it and write into its output. Where the
container's user is not root (so an exec'd root has no capabilities) the
notebook side runs it as the container's user instead, and it skips the drop.

Whatever it sends is checked again on the notebook side; its own limits only
save a transfer that would be refused anyway.

Exit codes: 0 done; 2 no such file or folder; 3 too large (stderr: JSON
``{"too_large": bytes}``); 4 an OS error; 5 a broken archive; 6 the target
exists and force was not given (stderr: JSON ``{"exists": path}``); 7 cannot
drop privileges. On success ``get`` writes JSON ``{"left_out": [...],
"count": N}`` to stderr (fifos, sockets, devices it did not send) and
``put`` writes JSON ``{"path": ..., "entries": N}`` to stdout.
"""

import errno
import json
import os
import shutil
import stat
import sys
import tarfile

TOP = "top"  # the archive's top-level name: a placeholder, the notebook side names the copy
ENTRY_COST = 1024  # archive bytes counted per entry (header, pax header)
LEFT_OUT_SHOWN = 20  # names of left-out entries reported (their count is always exact)

NOT_FOUND, TOO_LARGE, OS_ERROR, BROKEN, EXISTS, NO_DROP = 2, 3, 4, 5, 6, 7


def entry_cost(st):
    """Archive bytes one entry takes: its header, and its content in 512-byte blocks."""
    n = ENTRY_COST
    if stat.S_ISREG(st.st_mode):
        n += (st.st_size + 511) // 512 * 512
    return n


def is_plain(st):
    """Files, folders and symbolic links travel; fifos, sockets and devices stay behind."""
    return stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)


def walk(top):
    """``(path, stat)`` of top (followed, as cp follows a link it is given) and of
    everything under it (links not followed), each folder before its contents."""
    st = os.stat(top)
    yield top, st
    if not stat.S_ISDIR(st.st_mode):
        return
    for root, dirs, files in os.walk(top):
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(root, name)
            yield path, os.lstat(path)


def _ownerless(info):
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack(tar, top, arcname, left_out):
    """Add top and everything under it to tar as arcname; paths of what cannot
    travel (relative to top) are appended to left_out."""
    for path, st in walk(top):
        rel = os.path.relpath(path, top)
        if not is_plain(st):
            left_out.append(rel)
            continue
        name = arcname if rel == "." else arcname + "/" + rel
        tar.add(path, arcname=name, recursive=False, filter=_ownerless)


# --- run in the container -----------------------------------------------------------
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


def drop_privileges(uid):
    """Files as uid (effective), but real and saved uid 0: out of reach of uid's processes."""
    if os.getuid() != 0:
        return  # run as the container's own user: nothing to drop
    try:
        os.setgroups([])
        os.setresgid(0, uid, 0)
        os.setresuid(0, uid, 0)
    except OSError as exc:
        fail(NO_DROP, "the file helper could not take the sandbox user's identity: %s" % exc)


def remove(path):
    """Remove one file, link or folder; a folder's links are removed, never followed."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def get(path, limit):
    path = os.path.realpath(path)  # a link named by the user is followed, as cp does
    if not os.path.exists(path):
        fail(NOT_FOUND, "no such file or folder in the instance: %s" % path)
    if not (os.path.isfile(path) or os.path.isdir(path)):
        fail(NOT_FOUND, "not a file or folder: %s" % path)
    need = 2 * ENTRY_COST + sum(entry_cost(st) for _, st in walk(path))
    if need > limit:
        fail(TOO_LARGE, json.dumps({"too_large": need}))
    out = sys.stdout.buffer
    left_out = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        pack(tar, path, TOP, left_out)
    out.flush()
    sys.stderr.write(json.dumps({"left_out": left_out[:LEFT_OUT_SHOWN], "count": len(left_out)}))


def put(dest, name, force):
    if os.path.isdir(dest):
        parent, final = dest, name
    else:
        parent, final = os.path.dirname(dest) or ".", os.path.basename(dest)
    if not os.path.isdir(parent):
        fail(NOT_FOUND, "no such folder in the instance: %s" % parent)
    target = os.path.join(os.path.abspath(parent), final)
    if os.path.lexists(target):
        if not force:
            fail(EXISTS, json.dumps({"exists": target}))
        remove(target)
    extra = {"filter": "tar"} if hasattr(tarfile, "data_filter") else {}
    count = 0
    try:
        with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
            for info in tar:
                for field in ("name", "linkname") if info.islnk() else ("name",):
                    parts = getattr(info, field).split("/")
                    parts[0] = final
                    setattr(info, field, "/".join(parts))
                tar.extract(info, parent, **extra)
                count += 1
    except BaseException:
        if os.path.lexists(target):  # nothing half-copied stays behind
            remove(target)
        raise
    sys.stdout.write(json.dumps({"path": target, "entries": count}))


def main(request):
    drop_privileges(request["uid"])
    os.chdir(request["home"])
    if request["mode"] == "get":
        get(request["path"], request["limit"])
    else:
        put(request["path"], request["name"], request["force"])


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except OSError as exc:
        fail(OS_ERROR, explain(exc))
    except (tarfile.TarError, ValueError, KeyError) as exc:
        fail(BROKEN, "%s: %s" % (type(exc).__name__, exc))
