# Receives the agent's sources from the first client and starts it.
#
# The client runs this file's text as the container's main process,
# `python3 -c <text> [ADDRESS]`, so an image needs nothing but a Python 3.8+:
# the agent arrives as source (a read-only root filesystem takes no files).
# It listens on the agent's unix socket, in a folder only root may enter (a
# tmpfs of the instance; the cell's user cannot connect, under gVisor too,
# whose SO_PEERCRED cannot be trusted); a client's relay (relay.py, exec'd as
# root) hands over its stdin and stdout there, then stays
# until that connection closes (the engine ends an exec's streams soon after
# its process exits). Until a `boot` frame comes, any other frame is answered
# with `need_boot`.
# Framing: see protocol.py.
import array, json, os, socket, struct, sys, types

ADDRESS = sys.argv[1] if len(sys.argv) > 1 else "/run/fiddledock/agent.sock"
MAX_BOOT = 64 * 1024 * 1024


def listen(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(address)  # left by an agent of an earlier start
    except OSError:
        pass
    old = os.umask(0o077)
    try:
        sock.bind(address)
    finally:
        os.umask(old)
    sock.listen(64)
    return sock


def take_client(listener):
    """``(connection, (stdin, stdout))`` a relay of our own uid hands over; None if not.

    The connection stays open as long as the client is served: the relay
    waits for it to close. The supervisor takes its clients with this too.
    """
    try:
        conn, _ = listener.accept()
    except OSError:
        return None
    fds = None
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != os.getuid():
            return None  # a cell's process (another uid): never a client
        conn.settimeout(2.0)  # only a relay gets here: it sends at once
        _, ancillary, _, _ = conn.recvmsg(16, socket.CMSG_SPACE(8 * 4))
        fds = array.array("i")
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return None
        conn.sendall(b"k")  # the fds have arrived
        conn.settimeout(None)
        return conn, tuple(fds)
    except OSError:
        fds = None
        return None
    finally:
        if fds is None:
            conn.close()


def _read(fd, n):
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _wait_boot(fd_in, fd_out):
    """The boot frame from this client; None if it left or sent garbage first."""
    try:
        while True:
            hlen, plen = struct.unpack(">II", _read(fd_in, 8))
            if hlen > MAX_BOOT or plen > MAX_BOOT:
                return None
            header = json.loads(_read(fd_in, hlen).decode("utf-8"))
            payload = _read(fd_in, plen)
            if isinstance(header, dict) and header.get("type") == "boot":
                return header, payload
            reply = json.dumps({"type": "need_boot"}).encode()
            os.write(fd_out, struct.pack(">II", len(reply), 0) + reply)
    except (EOFError, OSError, ValueError, RecursionError, struct.error):
        return None


def _boot():
    listener = listen(ADDRESS)
    while True:
        client = take_client(listener)
        if client is None:
            continue
        conn, fds = client
        boot = _wait_boot(*fds)
        if boot is not None:
            break
        for fd in fds:
            os.close(fd)
        conn.close()
    header = boot[0]
    _load(header["modules"], boot[1])
    del boot  # the sources: nothing needs them once loaded
    sys.modules["fiddledock_agent.supervisor"].main(header, listener, (conn,) + fds, take_client)


def _load(names, payload):
    """The agent's modules from the boot frame's payload (their sources as JSON)."""
    sources = json.loads(payload.decode("utf-8"))
    package = types.ModuleType("fiddledock_agent")
    package.__path__ = []
    sys.modules["fiddledock_agent"] = package
    for name in names:
        full = "fiddledock_agent." + name
        module = types.ModuleType(full)
        module.__file__ = "<fiddledock_agent/%s.py>" % name
        sys.modules[full] = module
        setattr(package, name, module)
        exec(compile(sources[name], module.__file__, "exec"), module.__dict__)


if __name__ == "__main__":
    _boot()
