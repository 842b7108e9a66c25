"""What the kernel tells the supervisor about this container, read, never changed.

Cgroup counters and limits (out-of-memory kills, failed forks at the pids
limit, the memory and pids limits), bytes of files in the writable tmpfs
folders, and per-process facts from ``/proc`` (alive, whose, ignoring
SIGINT), and the pid at the other end of a unix socket.
"""

import os
import signal
import socket
import struct

_cgroup_fds = {}


def _cgroup_read(*paths):
    """The text of the first of paths that exists.

    Counters are read at every cell's start and end: the file stays open and
    is re-read with pread (one syscall, where open/read/close cost ~100 us
    under gVisor).
    """
    fd = _cgroup_fds.get(paths)
    if fd is None:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                break
            except OSError:
                continue
        else:
            fd = -1
        _cgroup_fds[paths] = fd
    if fd < 0:
        return ""
    try:
        return os.pread(fd, 65536, 0).decode("ascii", "replace")
    except OSError:
        return ""


def _cgroup_counter(key, *paths):
    for line in _cgroup_read(*paths).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


def oom_kill_count():
    """How many processes the kernel's OOM killer took in this container."""
    return _cgroup_counter("oom_kill", "/sys/fs/cgroup/memory.events",
                           "/sys/fs/cgroup/memory/memory.oom_control")


def pids_max_count():
    """How many times creating a process or thread failed at the pids limit."""
    return _cgroup_counter("max", "/sys/fs/cgroup/pids.events",
                           "/sys/fs/cgroup/pids/pids.events")


def pids_limit():
    text = _cgroup_read("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max").strip()
    return int(text) if text.isdigit() else None


def memory_limit():
    text = _cgroup_read("/sys/fs/cgroup/memory.max",
                        "/sys/fs/cgroup/memory/memory.limit_in_bytes").strip()
    if not text.isdigit() or int(text) >= 1 << 60:
        return None
    return int(text)


def tmpfs_used(paths):
    """Bytes of files in the writable tmpfs mounts (they count as memory)."""
    total = 0
    for path in paths:
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        total += (st.f_blocks - st.f_bfree) * st.f_frsize
    return total


def ignores_sigint(pid, unknown=False):
    """Whether pid ignores SIGINT right now (os.system() does while it waits);
    ``unknown`` when the kernel does not say (gVisor's status has no SigIgn)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except (OSError, ValueError, IndexError):
        return False
    return unknown


def _is_zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return True  # gone already
    return stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"])


def uid_of(pid):
    """The real uid of pid, or None if it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def other_pids(keep=(), uid=None):
    """Live processes in the container but init, this process and keep.

    With ``uid``, only that user's: the cell's processes, never a relay or a
    file helper (they run as the agent's uid).
    """
    mine = {1, os.getpid()} | set(keep)
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in mine and not _is_zombie(int(name)):
            if uid is None or uid_of(int(name)) == uid:
                pids.append(int(name))
    return pids


def peer_pid(sock):
    """The pid at the other end of a unix socket (a relay), or 0."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return struct.unpack("3i", creds)[0]
