# One client's way in: hands this process's stdin and stdout to the agent.
#
# A client runs this file's text with `docker exec` as the agent's uid:
# `python3 -I -S -c <text> WAIT [ADDRESS]`. It connects to the agent's
# unix socket (waiting up to WAIT seconds for a container that is
# still starting), checks the listener runs as its own uid (so a cell's
# process cannot pose as the agent) and passes fds 0 and 1. From then on the
# exec's streams are the agent's channel to this client; the relay only
# waits (as `sleep` where the image has one), so that the engine keeps them
# open (it closes an exec's streams shortly after its process exits), until
# the agent lets go of this client and ends it. Standard library only,
# Python 3.8+.
import array, os, socket, struct, sys, time

WAIT = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
ADDRESS = sys.argv[2] if len(sys.argv) > 2 else "/run/fiddledock/agent.sock"
SLEEPERS = ("/bin/sleep", "/usr/bin/sleep")


def fail(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
    os._exit(3)


def connect():
    deadline = time.monotonic() + WAIT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(ADDRESS)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                fail("no FiddleDock agent is listening in this container")
            time.sleep(0.005)


def main():
    sock = connect()
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    if struct.unpack("3i", creds)[1] != os.getuid():
        fail("the agent socket is held by another user: not handing the channel over")
    sock.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1]))])
    sock.settimeout(10.0)
    try:
        if not sock.recv(1):  # the agent has the fds
            fail("the agent did not take the channel")
    except OSError:
        fail("the agent did not take the channel")
    os.close(0)
    os.close(1)  # the agent holds them now
    # Waiting costs a whole Python (~4 MiB per connected kernel); a `sleep`
    # costs ~100 KiB. The agent ends this process when it lets go of us.
    for path in SLEEPERS:
        try:
            os.execv(path, [path, "2147483647"])
        except OSError:
            pass
    sock.settimeout(None)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass
    os._exit(0)


main()
