"""The rest of the container's surface, replayed as a cell would attack it.

io_uring (allowed by Docker 20.10's default seccomp profile) is refused to a
cell and its child processes; /dev/shm and the home folder and /tmp are
bounded in bytes and in files, with a message naming the folder that is
full; POSIX message queues are refused. Each case ends with the instance
still usable.
"""

import pytest

from fiddledock_magic import CellKilled
from test_hostile import create  # noqa: F401 (a fixture: create(name, '--disk 16m'))


IO_URING_SETUP = (
    "import ctypes, errno, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "params = ctypes.create_string_buffer(120)\n"
    "fd = libc.syscall(425, 1, params)\n"
    "print(fd, errno.errorcode.get(ctypes.get_errno()))\n")


def test_io_uring_is_refused_to_a_cell_and_to_its_child_processes(run, unique_name):
    _, out, err = run(IO_URING_SETUP, unique_name)
    assert out in ("-1 EPERM\n", "-1 ENOSYS\n"), out
    assert "io_uring" not in err  # the filter was installed: no notice
    code = ("import subprocess, sys\n"
            "print(subprocess.run([sys.executable, '-c', %r], capture_output=True,\n"
            "                     text=True).stdout, end='')" % IO_URING_SETUP)
    _, out, _ = run(code, unique_name)
    assert out in ("-1 EPERM\n", "-1 ENOSYS\n"), out
    # The neighbouring calls are untouched (pidfd_open of ourselves works).
    _, out, _ = run("fd = libc.syscall(434, os.getpid(), 0)\nprint(fd > 0)", unique_name)
    assert out == "True\n"
    _, out, _ = run("import threading, asyncio\nprint(asyncio.run(asyncio.sleep(0, 'ok')))",
                    unique_name)
    assert out == "ok\n"


def fill_with_files(folder):
    return ("import errno\nn = 0\ntry:\n"
            "    while True:\n"
            "        open('%s/f%%d' %% n, 'w').close()\n"
            "        n += 1\n"
            "except OSError as e:\n"
            "    print(errno.errorcode[e.errno], n)" % folder)


@pytest.mark.parametrize("folder", ["/tmp", "/home/sandbox", "/dev/shm"])
def test_creating_files_until_failure_says_too_many_files(run, create, unique_name, folder):
    create(unique_name, "--disk 16m")  # 16 MiB / 4 KiB: 4096 files per folder
    run("x = 41", unique_name)
    _, out, err = run(fill_with_files(folder), unique_name, "--timeout 60")
    code, made = out.split()
    assert code == "ENOSPC" and 4000 <= int(made) <= 4096, out
    assert "%s has too many files: it holds 4096, the most it allows" % folder in err
    # Still usable, namespace kept; once files are deleted the folder works again.
    _, out, err = run("import glob, os\nfor p in glob.glob('%s/f*'): os.remove(p)\n"
                      "open('%s/after', 'w').write('ok')\nprint(x + 1, open('%s/after').read())"
                      % (folder, folder, folder), unique_name)
    assert out == "42 ok\n" and "too many files" not in err


def test_shared_memory_is_bounded_in_bytes(run, create, unique_name):
    create(unique_name, "--disk 16m")
    code = ("import errno\nn = 0\ntry:\n    with open('/dev/shm/fill', 'wb') as f:\n"
            "        while True:\n            f.write(b'z' * (1 << 20))\n            n += 1\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno], n)")
    _, out, err = run(code, unique_name)
    code, written = out.split()
    assert code == "ENOSPC" and 8 <= int(written) <= 16, out
    assert "/dev/shm is full: all of its 16.0 MiB are used" in err
    # What /dev/shm is for still works once there is room.
    _, out, _ = run("import os, multiprocessing\nos.remove('/dev/shm/fill')\n"
                    "lock = multiprocessing.Lock()\nwith lock:\n    print('locked')",
                    unique_name)
    assert out == "locked\n"


def test_posix_message_queues_are_refused(run, unique_name):
    code = ("import ctypes, ctypes.util, errno, os\n"
            "rt = ctypes.CDLL(ctypes.util.find_library('rt') or 'librt.so.1', use_errno=True)\n"
            "fd = rt.mq_open(b'/q', os.O_CREAT | os.O_RDWR, 0o600, None)\n"
            "print(fd, errno.errorcode.get(ctypes.get_errno()))\n"
            "try:\n    open('/dev/mqueue/q2', 'w')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
            "print(os.listdir('/dev/mqueue'))")
    _, out, _ = run(code, unique_name)
    assert out == "-1 EMFILE\nEMFILE\n[]\n", out
    assert run("print('usable')", unique_name)[1] == "usable\n"


def test_files_cannot_fill_a_small_memory(run, create, unique_name):
    # Each file costs ~1 KiB of memory: with 24 MiB of memory a folder holds
    # 24 MiB / 4 / 4 KiB = 1536 files (not one per 4 KiB of its 64 MiB).
    create(unique_name, "--memory 24m --disk 64m")
    run("x = 41", unique_name)
    for folder in ("/tmp", "/home/sandbox", "/dev/shm"):
        _, out, err = run(fill_with_files(folder), unique_name, "--timeout 60")
        code, made = out.split()
        assert code == "ENOSPC" and 1500 <= int(made) <= 1535, out  # the folder is one
        assert "%s has too many files: it holds 1536" % folder in err
    # Memory then running out says what the files take.
    with pytest.raises(CellKilled) as info:
        run("hog = []\nwhile True:\n    hog.append(bytearray(1 << 20))", unique_name,
            "--timeout 60")
    text = str(info.value)
    assert "out of memory (limit 24 MiB)" in text and "/tmp has too many files" in text, text
    _, out, _ = run("import os\nprint(len(os.listdir('/tmp')) > 1500)", unique_name)
    assert out == "True\n"


@pytest.fixture
def image_without_ctypes(docker_client, default_image):
    """The default image with Python's ctypes removed (a minimal Python has none)."""
    import io
    import uuid
    tag = "fiddledock-test-noctypes:%s" % uuid.uuid4().hex[:8]
    dockerfile = ("FROM %s\nUSER root\nRUN rm -rf /usr/lib/python3*/ctypes\nUSER 1000:1000\n"
                  % default_image)
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    yield tag
    docker_client.images.remove(tag, force=True)


def test_without_ctypes_the_first_cell_says_io_uring_is_not_blocked(run, unique_name,
                                                                    image_without_ctypes):
    _, out, err = run("print('runs')", unique_name, "--image %s" % image_without_ctypes)
    assert out == "runs\n"
    assert ("io_uring is not blocked in this instance: its Python has no ctypes, so "
            "FiddleDock could not add its seccomp filter") in err
    assert run("print('again')", unique_name)[2] == ""  # said once
