"""The channel to an instance's agent: one per client, out of the cell's reach.

Each kernel reaches the agent through a stream of its own, so clients cannot
corrupt each other; the agent runs as another user than the cell, so code in
a cell cannot signal, trace or write into it; a kernel that dies or gives up
frees the instance; another kernel may interrupt or reset a cell and is told
whose it was.
"""

import json
import os
import re
import signal
import struct
import threading
import time

import pytest

from conftest import new_scope, ok, one_line_error, printed, stream_text, wait_for
from fiddledock_magic._agent_files import relay_source
from fiddledock_magic._extension import manager_of
from fiddledock_magic._instance import AGENT_USER


def execute_in_background(kernel, code, timeout=120):
    """Start code in kernel on a thread: (thread, result dict, live iopub list)."""
    result, live = {}, []

    def run():
        try:
            result["reply"], result["msgs"] = kernel.execute(code, timeout=timeout,
                                                             collect=live)
        except Exception as exc:  # the kernel was killed under it
            result["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result, live


# --- privilege separation: the cell cannot reach the agent ------------------------------

ATTACKS = r'''
import ctypes, os, signal, socket
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH = 16
agents = []
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        with open("/proc/%s/status" % pid) as f:
            if f.read().split("Uid:")[1].split()[0] == "0":
                agents.append(int(pid))
print("agent processes:", len(agents))
for pid in agents:
    for what, attack in (
            ("signal", lambda: os.kill(pid, signal.SIGSTOP)),
            ("ptrace", lambda: libc.ptrace(PTRACE_ATTACH, pid, 0, 0) == 0 or
                               (_ for _ in ()).throw(OSError(ctypes.get_errno(), "ptrace"))),
            ("mem", lambda: open("/proc/%d/mem" % pid, "rb").read(1)),
            ("fd", lambda: open("/proc/%d/fd/1" % pid, "wb").write(b"forged"))):
        try:
            attack()
            print("ATTACK WORKED", what, pid)
        except OSError as exc:
            print("refused", what, exc.errno in (1, 13))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("/run/fiddledock/agent.sock")
    print("ATTACK WORKED: connected to the agent's socket")
except OSError as exc:
    print("agent socket refused", exc.errno == 13)
'''


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_a_cell_cannot_signal_trace_or_write_into_the_agent(run, shell, unique_name, runtime):
    shell.run_line_magic("dockerrun", "create %s --runtime %s" % (unique_name, runtime))
    run("secret = 42", unique_name)
    _, out, err = run(ATTACKS, unique_name)
    assert "ATTACK WORKED" not in out, out
    agents = int(re.search(r"agent processes: (\d+)", out).group(1))
    assert agents >= 1  # the supervisor (and docker-init) run as root, the cell does not
    refused = [line for line in out.splitlines() if line.startswith("refused ")]
    assert len(refused) == 4 * agents and " False" not in out, out
    assert "agent socket refused True" in out, out
    # nothing forged reached us, and the agent still serves the instance
    assert "forged" not in out + err
    value, out, _ = run("print(secret, os.getuid())", unique_name)
    assert out == "42 1000\n"


# --- clients cannot corrupt each other -----------------------------------------------

def test_two_kernels_on_one_instance_never_splice_their_frames(kernels):
    """Kernel A sends cells of 4 MB while kernel B runs cells and `list` in the same
    instance: every cell of both is answered, and A's state survives."""
    scope = new_scope()
    a, b = kernels(scope), kernels(scope)
    ok(a.execute("%%dockerrun shared\nkept = 'still here'")[0])
    big = "%%dockerrun shared\nx = '" + "x" * (4 << 20) + "'\nprint(len(x))"
    failures = []

    def kernel_b():
        for j in range(40):
            code = "%dockerrun list" if j % 10 == 9 else "%%%%dockerrun shared\nprint('B', %d)" % j
            reply, msgs = b.execute(code)
            if reply["status"] != "ok" and reply.get("ename") != "InstanceBusy":
                failures.append(("B", j, reply.get("evalue")))
    thread = threading.Thread(target=kernel_b)
    thread.start()
    done = 0
    while thread.is_alive() or done < 5:
        reply, msgs = a.execute(big, timeout=120)
        if reply["status"] == "ok":
            assert stream_text(msgs) == "%d\n" % (4 << 20)
            done += 1
        elif reply.get("ename") != "InstanceBusy":
            failures.append(("A", done, reply.get("evalue")))
    thread.join(120)
    assert failures == []
    reply, msgs = a.execute("%%dockerrun shared\nprint(kept)")
    ok(reply)
    assert stream_text(msgs) == "still here\n"


def test_garbage_from_one_client_drops_only_that_client(run, unique_name, shell):
    run("kept = 'yes'", unique_name)
    inst = manager_of(shell).instances[unique_name]
    backend = inst.backend
    attacks = [b"\xff" * 64,  # not a frame
               struct.pack(">II", 200001, 0) + b"[" * 200000 + b"]",  # too deep
               struct.pack(">II", 2, 0) + b"[]",  # not an object
               struct.pack(">II", 0x78787878, 0),  # a length read out of someone's payload
               b"".join(struct.pack(">II", len(h), 0) + h for h in (
                   json.dumps({"type": "execute", "timeout": [1], "id": {}}).encode(),
                   json.dumps({"type": "interrupt", "kill": "yes"}).encode()))]
    for attack in attacks:
        _, sock, keepalive = backend.exec_socket(
            inst.container_id, ["python3", "-I", "-S", "-c", relay_source(), "10"],
            user=AGENT_USER)
        sock.sendall(attack)
        time.sleep(0.3)
        sock.close()
    _, out, _ = run("print(kept)", unique_name)
    assert out == "yes\n"


# --- a kernel that goes away frees the instance -------------------------------------------

def test_a_dead_kernels_cell_is_interrupted_and_the_instance_freed(kernels):
    scope = new_scope()
    a, b = kernels(scope), kernels(scope)
    ok(a.execute("%%dockerrun held\nkept = 'namespace kept'")[0])
    thread, _, live = execute_in_background(
        a, "%%dockerrun held --timeout 0\nimport time\nprint('looping', flush=True)\n"
           "while True:\n    time.sleep(1)")
    wait_for(printed(live, "looping"), "the cell to print 'looping'", 60)
    os.kill(a.pid, signal.SIGKILL)
    started = time.monotonic()
    reply, msgs = b.execute("%%dockerrun held\nprint(kept)", timeout=60)
    ok(reply)
    assert stream_text(msgs) == "namespace kept\n"
    assert time.monotonic() - started < 15  # interrupted within seconds, not held


def test_another_kernel_may_interrupt_a_cell_and_is_told_whose(kernels):
    scope = new_scope()
    a, b = kernels(scope), kernels(scope)
    ok(a.execute("%%dockerrun shared\nkept = 1")[0])
    thread, result, live = execute_in_background(
        a, "%%dockerrun shared\nimport time\nprint('started', flush=True)\ntime.sleep(60)")
    wait_for(printed(live, "started"), "the cell to print 'started'", 60)
    reply, msgs = b.execute("%dockerrun interrupt shared")
    ok(reply)
    said = stream_text(msgs)
    assert re.match(r"interrupted instance 'shared'; interrupted the cell of the kernel with "
                    r"pid %d on \S+ \(user \S+\) \(running for \d+ s\)\n$" % a.pid, said), said
    thread.join(30)
    assert result["reply"]["status"] == "error"
    assert result["reply"]["ename"] == "KeyboardInterrupt"
    reply, msgs = b.execute("%%dockerrun shared\nprint(kept)")
    ok(reply)
    assert stream_text(msgs) == "1\n"  # interrupted, not killed: the namespace is kept
    reply, msgs = b.execute("%dockerrun interrupt shared")
    assert stream_text(msgs) == "instance 'shared' was not running a cell\n"


def test_another_kernel_may_reset_a_running_cell_and_is_told_whose(kernels):
    scope = new_scope()
    a, b = kernels(scope), kernels(scope)
    thread, result, live = execute_in_background(
        a, "%%dockerrun shared\nimport time\nx = 1\nprint('started', flush=True)\n"
           "time.sleep(60)")
    wait_for(printed(live, "started"), "the cell to print 'started'", 60)
    reply, msgs = b.execute("%dockerrun reset shared")
    ok(reply)
    assert re.match(r"reset instance 'shared': its variables are cleared, its files are kept; "
                    r"stopped the cell of the kernel with pid %d on \S+" % a.pid,
                    stream_text(msgs)), stream_text(msgs)
    thread.join(30)
    message = one_line_error(result["reply"], "CellKilled")
    assert ("was ended: instance 'shared' was reset with %%dockerrun reset by the kernel "
            "with pid %d" % b.pid) in message
    reply, msgs = a.execute("%%dockerrun shared\nprint('x' in dir())")
    ok(reply)
    assert "False" in stream_text(msgs)
