"""A seccomp filter that refuses io_uring to every process of the cell.

Docker 20.10's default profile still allows ``io_uring_setup``, ``_enter``
and ``_register`` (engines from 25 drop them): a large kernel attack surface
that bypasses per-syscall filtering. A profile of our own would replace
Docker's default one, so the agent stacks one more filter on top of it
instead. Filters are inherited across fork and exec and can never be
removed, so installing it before the worker is forked covers every process
a cell starts. ``no-new-privileges`` lets an unprivileged process install it.
"""

import struct

IO_URING_FIRST, IO_URING_LAST = 425, 427  # the same numbers on every architecture
X32_BIT = 0x40000000  # x86-64's x32 ABI numbers its calls from here
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
# Classic BPF opcodes.
LD_W_ABS = 0x20
ALU_AND_K = 0x54
JGE_K = 0x35
JGT_K = 0x25
RET_K = 0x06


def _program():
    """The filter: EPERM for io_uring_setup/enter/register, everything else passes on."""
    insns = [
        (LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        (ALU_AND_K, 0, 0, 0xFFFFFFFF & ~X32_BIT),
        (JGE_K, 0, 2, IO_URING_FIRST),  # below the range: allow
        (JGT_K, 1, 0, IO_URING_LAST),  # above it: allow
        (RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
        (RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in insns), len(insns)


def block_io_uring():
    """Install the filter in this process. None, or a sentence saying why not."""
    try:
        import ctypes
    except ImportError:
        return ("io_uring is not blocked in this instance: its Python has no ctypes, "
                "so FiddleDock could not add its seccomp filter")
    code, count = _program()
    buf = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(count, ctypes.addressof(buf))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = (libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
              and libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0)
        errno = ctypes.get_errno()
    except (OSError, AttributeError) as exc:
        ok, errno = False, str(exc)
    if ok:
        return None
    return ("io_uring is not blocked in this instance: FiddleDock's seccomp filter "
            "was refused (%s)" % (errno,))
