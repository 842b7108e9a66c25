"""The offline route's root filesystem rules, and the build output reader: pure
logic on files and lines, no engine (the build itself is in tests/test_image.py)."""

import os

import pytest

from fiddledock_magic import _rootfs
from fiddledock_magic._docker_images import follow_build
from fiddledock_magic._errors import ImageBuildError


def write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_chroot_gets_a_clean_environment_with_the_proxies():
    host = {"PATH": "/home/me/bin:/usr/bin", "PYTHONPATH": "/home/me/lib", "LD_PRELOAD": "x.so",
            "HOME": "/home/me", "LC_ALL": "de_DE.UTF-8", "http_proxy": "http://proxy:3128",
            "HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "localhost"}
    assert _rootfs.clean_env(host) == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive",
        "http_proxy": "http://proxy:3128", "HTTPS_PROXY": "http://proxy:3128",
        "NO_PROXY": "localhost"}


def test_trimming_drops_caches_docs_and_logs_but_keeps_licences_and_folders(tmp_path):
    root = tmp_path / "rootfs"
    dropped = [write(root / rel) for rel in (
        "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
        "var/cache/apt/archives/python3_3.11.deb", "var/cache/apt/pkgcache.bin",
        "var/cache/debconf/config.dat-old", "var/log/dpkg.log", "var/log/apt/term.log",
        "usr/share/doc/python3/changelog.Debian.gz", "usr/share/man/man1/python3.1.gz",
        "usr/share/locale/de/LC_MESSAGES/apt.mo", "usr/share/info/dir/x")]
    kept = [write(root / rel) for rel in (
        "var/cache/debconf/config.dat", "usr/share/doc/python3/copyright",
        "usr/lib/python3/dist-packages/numpy/__init__.py", "etc/apt/sources.list")]
    write(root / "etc/resolv.conf", "nameserver 10.0.0.1\n")
    write(root / "etc/hostname", "the-build-host\n")
    _rootfs.trim(root)
    assert [p for p in dropped if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []
    for folder in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log/apt",
                   "usr/share/man", "usr/share/locale"):
        assert (root / folder).is_dir(), folder  # apt and dpkg expect these
    assert (root / "etc/resolv.conf").read_text() == ""
    assert (root / "etc/hostname").read_text() == ""


def test_trimming_never_follows_a_link_out_of_the_tree(tmp_path):
    host = tmp_path / "host"
    host_files = [write(host / name, "precious") for name in ("doc/readme", "log/syslog",
                                                              "man/man1/ls.1", "resolv.conf")]
    root = tmp_path / "rootfs"
    (root / "usr/share").mkdir(parents=True)
    (root / "var/log").mkdir(parents=True)
    (root / "etc").mkdir()
    os.symlink(host / "doc", root / "usr/share/doc")        # a whole trimmed folder
    os.symlink(host / "man", root / "usr/share/man")
    os.symlink(host / "log", root / "var/log/journal")      # a folder inside one
    os.symlink(host / "log/syslog", root / "var/log/syslog")  # a file inside one
    os.symlink(host / "resolv.conf", root / "etc/resolv.conf")
    _rootfs.trim(root)
    assert [p.read_text() for p in host_files] == ["precious"] * 4
    assert not os.path.lexists(root / "var/log/syslog")  # the link itself goes


def test_mounts_left_below_the_work_folder_are_found_deepest_first(tmp_path):
    work = tmp_path / "fiddledock rootfs"
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "30 22 0:5 / {w}/rootfs/proc rw - proc proc rw\n"
        "31 30 0:6 / {w}/rootfs/proc/sys/fs/binfmt_misc rw - binfmt_misc x rw\n"
        "32 22 0:7 / {w}/rootfs/dev/pts rw - devpts devpts rw\n"
        "33 22 0:8 / {w}-other/proc rw - proc proc rw\n"
        "short line\n".format(w=str(work).replace(" ", "\\040")))
    assert _rootfs.mounts_under(work, str(info)) == [
        "%s/rootfs/proc/sys/fs/binfmt_misc" % work, "%s/rootfs/dev/pts" % work,
        "%s/rootfs/proc" % work]
    assert _rootfs.mounts_under(work, str(tmp_path / "no-such-file")) == []


def test_removing_the_work_folder(tmp_path):
    work = tmp_path / "work"
    write(work / "rootfs/etc/passwd")
    lines = []
    _rootfs.remove_tree(work, lines.append)
    assert not work.exists() and lines == []


def test_a_failing_command_says_what_failed_with_its_last_lines():
    lines = []
    script = "for i in $(seq 1 20); do echo line $i; done; echo oops >&2; exit 3"
    with pytest.raises(ImageBuildError) as info:
        _rootfs.run_streaming(["sh", "-c", script], lines.append, "debootstrap")
    assert lines == ["line %d" % i for i in range(1, 21)] + ["oops"]
    assert str(info.value) == "debootstrap failed with exit code 3:\n" + "\n".join(lines[-15:])


def test_a_command_that_cannot_start_is_one_error():
    with pytest.raises(ImageBuildError, match="^debootstrap could not start: "):
        _rootfs.run_streaming(["/no/such/debootstrap"], print, "debootstrap")


def test_build_output_arrives_line_by_line():
    lines = []
    follow_build([{"stream": "Step 1/2 : FROM base\n ---> abc"}, {"stream": "123\n\n"},
                  {"status": "pulling"}, {"aux": {"ID": "sha256:0"}}, {"stream": "last"}],
                 lines.append)
    assert lines == ["Step 1/2 : FROM base", " ---> abc123", "pulling", "last"]


def test_a_build_error_keeps_the_pending_output_and_says_why():
    lines = []
    with pytest.raises(ImageBuildError, match="^docker build failed: exit 3$"):
        follow_build([{"stream": "about to fail"},
                      {"error": "x", "errorDetail": {"message": "exit 3\n"}}], lines.append)
    assert lines == ["about to fail"]
