"""%dockerrun put / get: files and folders in and out of an instance, and what must never happen.

Round trips go through the real engine. Hostile archives are made two ways:
by ``extract`` directly (every shape of attack, no Docker needed), and by a
compromised helper in a real container (``_files.helper_source`` replaced), since
the real helper never sends such things; the notebook side must hold
either way.
"""

import base64
import hashlib
import io
import os
import shlex
import stat
import tarfile
import time
import uuid

import pytest
from IPython.core.error import UsageError

from fiddledock_magic import _archive, _files
from fiddledock_magic._errors import TransferError, UnsafeArchive


@pytest.fixture
def line(line_magic):
    """line('put ...') -> what the line magic printed."""
    return line_magic


@pytest.fixture
def limit(shell):
    """Set DockerRun.transfer_limit for one test."""
    config = shell.magics_manager.registry["DockerRunMagics"].config_obj
    before = config.transfer_limit

    def _set(value):
        config.transfer_limit = value
    yield _set
    config.transfer_limit = before


def snapshot(root):
    """Every path under root with its type and content hash."""
    seen = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                seen[path] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                seen[path] = ("file", hashlib.sha256(open(path, "rb").read()).hexdigest())
            else:
                seen[path] = ("dir",)
    return seen


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# --- round trips through a real instance ---------------------------------------
def test_file_round_trip(run, line, unique_name, tmp_path):
    data = os.urandom(300_000) + b"\xff\xfe not utf-8"
    src = tmp_path / "my données.bin"  # a space and non-ASCII: quoted as in a notebook
    run("pass", unique_name)  # put copies into an existing instance only
    src.write_bytes(data)
    out = line("put %s %s:/home/sandbox/in.bin" % (shlex.quote(str(src)), unique_name))
    assert "copied" in out and "%s:/home/sandbox/in.bin" % unique_name in out
    _, seen, _ = run("import hashlib\nprint(hashlib.sha256(open('in.bin','rb').read()).hexdigest())",
                     unique_name)
    assert seen.strip() == hashlib.sha256(data).hexdigest()
    back = tmp_path / "back.bin"
    line("get %s:/home/sandbox/in.bin %s" % (unique_name, back))
    assert back.read_bytes() == data
    # Into an existing folder: the file keeps its name; a second get needs --force.
    (tmp_path / "into").mkdir()
    line("get %s:in.bin %s" % (unique_name, tmp_path / "into"))  # relative to /home/sandbox
    with pytest.raises(TransferError, match="in.bin exists already; add --force"):
        line("get %s:in.bin %s" % (unique_name, tmp_path / "into"))
    line("get %s:in.bin %s --force" % (unique_name, tmp_path / "into"))
    assert (tmp_path / "into" / "in.bin").read_bytes() == data


def test_folder_round_trip(run, line, unique_name, tmp_path):
    run("pass", unique_name)  # put copies into an existing instance only
    src = tmp_path / "project"
    (src / "data" / "raw").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "data" / "raw" / "a.csv").write_text("x,y\n1,2\n")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    os.symlink("data/raw/a.csv", src / "latest.csv")
    line("put %s %s:/home/sandbox" % (src, unique_name))
    _, out, _ = run("import os\nprint(sorted(os.listdir('project')), os.readlink('project/latest.csv'),"
                    " bool(os.stat('project/run.sh').st_mode & 0o100))\n"
                    "open('project/data/result.txt', 'w').write('made in the container')",
                    unique_name)
    assert out == "['data', 'empty', 'latest.csv', 'run.sh'] data/raw/a.csv True\n"
    dest = tmp_path / "out"
    dest.mkdir()
    summary = line("get %s:/home/sandbox/project %s" % (unique_name, dest))
    got = dest / "project"
    assert (got / "data" / "result.txt").read_text() == "made in the container"
    assert (got / "data" / "raw" / "a.csv").read_text() == "x,y\n1,2\n"
    assert (got / "empty").is_dir()
    assert os.readlink(got / "latest.csv") == "data/raw/a.csv"
    assert os.access(got / "run.sh", os.X_OK)
    assert "did not create" not in summary


def test_put_to_a_new_name_and_into_read_only_places(run, line, unique_name, tmp_path):
    run("pass", unique_name)  # put copies into an existing instance only
    src = tmp_path / "notes.txt"
    src.write_text("n")
    line("put %s %s:/tmp/renamed.txt" % (src, unique_name))
    _, out, _ = run("print(open('/tmp/renamed.txt').read())", unique_name)
    assert out == "n\n"
    with pytest.raises(TransferError, match="read-only file system"):
        line("put %s %s:/etc/notes.txt" % (src, unique_name))
    with pytest.raises(TransferError, match="no such folder in the instance"):
        line("put %s %s:/home/sandbox/missing/dir/x.txt" % (src, unique_name))


def test_get_never_creates_links_that_leave_the_destination(run, line, unique_name, tmp_path):
    run("import os\nos.makedirs('box/sub')\nopen('box/sub/f.txt', 'w').write('inside')\n"
        "os.symlink('/etc/passwd', 'box/passwd')\n"      # absolute
        "os.symlink('../../..', 'box/up')\n"             # climbs out
        "os.symlink('sub/../..', 'box/sneaky')\n"        # climbs out, less obviously
        "os.symlink('hop/..', 'box/chain')\n"            # through another link ...
        "os.symlink('sub/..', 'box/hop2')\n"
        "os.symlink('..', 'box/hop')\n"                  # ... that leaves
        "os.symlink('sub/f.txt', 'box/fine')\n"          # stays inside: kept
        "os.symlink('.', 'box/sub/self')", unique_name)  # stays inside: kept
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched")
    dest = tmp_path / "dest"
    dest.mkdir()
    before = snapshot(tmp_path)
    passwd = sha("/etc/passwd")
    summary = line("get %s:/home/sandbox/box %s" % (unique_name, dest))
    box = dest / "box"
    assert (box / "fine").read_text() == "inside"
    assert os.readlink(box / "sub" / "self") == "."
    assert os.readlink(box / "hop2") == "sub/.."
    for bad in ("passwd", "up", "sneaky", "chain", "hop"):
        assert not os.path.lexists(box / bad), bad
        assert "box/%s ->" % bad in summary
    after = snapshot(tmp_path)
    new = {p for p in after if p not in before}
    assert all(p.startswith(str(box)) for p in new), new
    assert {p: v for p, v in after.items() if p in before} == before
    assert sha("/etc/passwd") == passwd


def test_get_of_a_link_copies_the_containers_file_not_the_hosts(run, line, unique_name, tmp_path):
    _, theirs, _ = run("import os, hashlib\nos.symlink('/etc/passwd', 'pw')\n"
                       "print(hashlib.sha256(open('/etc/passwd','rb').read()).hexdigest())",
                       unique_name)
    passwd = sha("/etc/passwd")
    target = tmp_path / "pw"
    line("get %s:/home/sandbox/pw %s" % (unique_name, target))
    assert not target.is_symlink()
    assert sha(target) == theirs.strip()
    assert sha("/etc/passwd") == passwd


# --- size caps ---------------------------------------------------------------------
def test_put_over_the_limit_sends_nothing(run, line, limit, unique_name, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 40_000)
    run("pass", unique_name)
    limit("16k")
    with pytest.raises(TransferError, match="transfer_limit"):
        line("put %s %s:/home/sandbox/big.bin" % (big, unique_name))
    _, out, _ = run("import os\nprint(os.path.exists('big.bin'))", unique_name)
    assert out == "False\n"


def test_get_over_the_limit_writes_nothing(run, line, limit, unique_name, tmp_path):
    run("open('big.bin', 'wb').write(b'x' * 40_000)", unique_name)
    limit("16k")
    with pytest.raises(TransferError, match=r"transfer_limit \(16.0 KiB\)"):
        line("get %s:/home/sandbox/big.bin %s" % (unique_name, tmp_path / "big.bin"))
    assert os.listdir(tmp_path) == []


def test_an_endless_stream_is_cut_at_the_limit(run, line, limit, unique_name, tmp_path,
                                                monkeypatch):
    """A compromised container that ignores the limit: reading stops at it.

    (64 MiB, not endless: a helper the client gave up on runs on while the engine
    drains its output, and FiddleDock does not stop it yet, so an endless one would
    burn the host's CPU for the rest of the test session.)"""
    run("pass", unique_name)
    monkeypatch.setattr(_files, "helper_source", lambda: "import sys\nb = b'\\0' * 65536\n"
                                                         "for _ in range(1024): sys.stdout.buffer.write(b)")
    limit("2m")
    start = time.monotonic()
    with pytest.raises(TransferError, match="transfer_limit"):
        line("get %s:/home/sandbox %s" % (unique_name, tmp_path / "x"))
    assert time.monotonic() - start < 10
    assert os.listdir(tmp_path) == []


# --- hostile archives ----------------------------------------------------------------
def make_tar(entries):
    """entries: (name, kind, data_or_linkname); kind in file, dir, sym, hard, chr, fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                data = extra.encode() if isinstance(extra, str) else extra
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = extra
            tar.addfile(info)
    return buf.getvalue()


EVIL = "/tmp/fiddledock-evil-%s" % uuid.uuid4().hex[:8]
HOSTILE = {
    "dotdot": [("top", "dir", None), ("top/../escaped.txt", "file", "x")],
    "leading dotdot": [("../escaped.txt", "file", "x")],
    "absolute": [(EVIL, "file", "x")],
    "absolute inside": [("top", "dir", None), ("top/a", "file", "a"), ("/" + EVIL.lstrip("/"), "file", "x")],
    "hard link out": [("top", "dir", None), ("top/pw", "hard", "/etc/passwd")],
    "hard link to nothing": [("top", "dir", None), ("top/pw", "hard", "top/missing")],
    "through a link": [("top", "dir", None), ("top/l", "sym", "/tmp"),
                       ("top/l/escaped.txt", "file", "x")],
    "through an inside link": [("top", "dir", None), ("top/sub", "dir", None),
                               ("top/l", "sym", "sub"), ("top/l/f.txt", "file", "x")],
    "two tops": [("top", "dir", None), ("other/escaped.txt", "file", "x")],
    "file then folder": [("top", "dir", None), ("top/a", "file", "x"), ("top/a/b", "file", "y")],
    "not a tar": None,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_before_anything_is_written(case, tmp_path):
    entries = HOSTILE[case]
    data = b"this is not an archive at all" * 40 if entries is None else make_tar(entries)
    dest = tmp_path / "dest"
    dest.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchive):
        _archive.extract(io.BytesIO(data), str(dest / "top"), 1 << 20)
    assert snapshot(tmp_path) == before
    assert not os.path.lexists(EVIL)
    assert not (tmp_path / "escaped.txt").exists()


def test_links_outside_are_left_out_and_named(tmp_path):
    data = make_tar([("top", "dir", None), ("top/f", "file", "data"),
                     ("top/abs", "sym", "/etc/passwd"), ("top/up", "sym", "../../.."),
                     ("top/a", "sym", "b/.."), ("top/b", "sym", ".."),  # a chain out
                     ("top/ok", "sym", "f"), ("top/loop1", "sym", "loop2"),
                     ("top/loop2", "sym", "loop1")])
    result = _archive.extract(io.BytesIO(data), str(tmp_path / "copy"), 1 << 20)
    top = tmp_path / "copy"
    assert sorted(os.listdir(top)) == ["f", "ok"]
    assert (top / "ok").read_text() == "data"
    assert sorted(s.split(" ->")[0] for s in result.links_outside) == [
        "copy/a", "copy/abs", "copy/b", "copy/loop1", "copy/loop2", "copy/up"]


def test_an_existing_link_on_this_machine_is_never_written_through(tmp_path):
    """A link left by an earlier get (or the user) is not followed by a later one:
    without --force the copy is refused, with it the link itself is replaced."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("mine")
    dest = tmp_path / "dest"
    (dest / "top").mkdir(parents=True)
    os.symlink(outside, dest / "top" / "l")
    os.symlink(outside / "victim", dest / "v")
    data = make_tar([("top", "dir", None), ("top/l", "dir", None), ("top/l/f.txt", "file", "x")])
    before = snapshot(tmp_path)
    with pytest.raises(TransferError, match="top exists already; add --force"):
        _archive.extract(io.BytesIO(data), str(dest / "top"), 1 << 20)
    assert snapshot(tmp_path) == before
    _archive.extract(io.BytesIO(data), str(dest / "top"), 1 << 20, force=True)
    assert os.listdir(outside) == ["victim"]
    assert not (dest / "top" / "l").is_symlink() and (dest / "top" / "l" / "f.txt").exists()
    # A file over an existing link replaces the link; the link's target is untouched.
    _archive.extract(io.BytesIO(make_tar([("x", "file", "new")])), str(dest / "v"), 1 << 20,
                     force=True)
    assert (outside / "victim").read_text() == "mine"
    assert not (dest / "v").is_symlink() and (dest / "v").read_text() == "new"


def test_sizes_declared_inside_the_archive_are_capped(tmp_path):
    data = make_tar([("top", "dir", None), ("top/a", "file", b"x" * 5000),
                     ("top/b", "file", b"y" * 5000)])
    with pytest.raises(TransferError, match="transfer_limit"):
        _archive.extract(io.BytesIO(data), str(tmp_path / "top"), 8000)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", ["dotdot", "through a link", "two tops"])
def test_a_compromised_container_cannot_escape_either(case, run, line, unique_name, tmp_path,
                                                      monkeypatch):
    """The same refusals through a real engine, with the helper replaced."""
    run("pass", unique_name)
    payload = base64.b64encode(make_tar(HOSTILE[case])).decode()
    monkeypatch.setattr(_files, "helper_source", lambda: "import sys, base64\n"
                        "sys.stdout.buffer.write(base64.b64decode(%r))" % payload)
    dest = tmp_path / "dest"
    dest.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchive):
        line("get %s:/home/sandbox %s" % (unique_name, dest))
    assert snapshot(tmp_path) == before


# --- usage -------------------------------------------------------------------------
def test_bad_arguments_are_short_errors(shell, unique_name, tmp_path):
    with pytest.raises(UsageError):
        shell.run_line_magic("dockerrun", "put only-one-argument")
    with pytest.raises(TransferError, match="NAME:PATH"):
        shell.run_line_magic("dockerrun", "get no-colon-here %s" % tmp_path)
    with pytest.raises(TransferError, match="no such file or folder here"):
        shell.run_line_magic("dockerrun", "put %s/missing %s:/tmp" % (tmp_path, unique_name))
    with pytest.raises(TransferError, match="no instance named"):
        shell.run_line_magic("dockerrun", "get %s:/tmp %s" % (unique_name, tmp_path))
    with pytest.raises(UsageError, match="instance names"):
        shell.run_line_magic("dockerrun", "get bad/name:/tmp %s" % tmp_path)
