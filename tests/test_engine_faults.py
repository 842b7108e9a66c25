"""A frozen or restarted Docker engine: one clear error in bounded time, nothing stale.

Each test starts an engine of its own (tests/engines.py) and a real kernel
pointed at it with DOCKER_HOST, freezes (SIGSTOP) or restarts that engine,
and checks what the notebook shows. The bounds on waiting are generous: they
catch docker-py's 60 s default, not a slow machine.
"""

import re
import socket
import time
import uuid

import docker
import pytest
import requests.exceptions
import urllib3.exceptions

from conftest import Kernel, is_notice, stream_text
from engines import second_engine  # noqa: F401  (fixture)
from fiddledock_magic._docker_backend import DockerBackend
from fiddledock_magic._errors import EngineUnavailable

FROZEN_LIST_BOUND = 20.0  # s; docker-py alone waited 61 s
# A cell's own timeout (1 s), the wait for a silent agent, then a 3 s ping.
FROZEN_CELL_BOUND = 50.0


@pytest.fixture
def engine_kernel(second_engine):  # noqa: F811
    """A real kernel whose extension uses the second engine; stopped (and the engine
    thawed) afterwards."""
    kernel = Kernel("pytest-faults-%s" % uuid.uuid4().hex[:8],
                    env={"DOCKER_HOST": second_engine.host})
    try:
        yield kernel, second_engine
    finally:
        second_engine.thaw()  # a failed test must not leave it frozen for the stop
        kernel.execute("%dockerrun pool 0", timeout=60)
        kernel.shutdown()


def run_ok(kernel, code, timeout=120):
    """What a cell that must succeed showed: its stdout and the text of its displays."""
    reply, msgs = kernel.execute(code, timeout=timeout)
    assert reply["status"] == "ok", (code, reply.get("ename"), reply.get("evalue"),
                                     stream_text(msgs, "stderr"))
    shown = [m["content"]["data"].get("text/plain", "") for _, m in msgs
             if m["msg_type"] == "display_data" and not is_notice(m)]
    return stream_text(msgs) + "".join(shown)


def timed_error(kernel, code, timeout):
    """(seconds taken, reply, error traceback lines) of a cell that must fail."""
    started = time.monotonic()
    reply, msgs = kernel.execute(code, timeout=timeout)
    took = time.monotonic() - started
    assert reply["status"] == "error", (code, stream_text(msgs), stream_text(msgs, "stderr"))
    shown = [m["content"]["traceback"] for _, m in msgs if m["msg_type"] == "error"]
    assert len(shown) == 1
    return took, reply, shown[0]


def test_list_on_a_frozen_engine_is_one_line_in_seconds(engine_kernel):
    kernel, engine = engine_kernel
    run_ok(kernel, "%%dockerrun fz1\nx = 1")
    engine.freeze()
    took, reply, traceback = timed_error(kernel, "%dockerrun list", timeout=90)
    assert reply["ename"] == "EngineUnavailable"
    assert len(traceback) == 1 and "did not answer within" in traceback[0], traceback
    assert engine.host in traceback[0]
    assert took < FROZEN_LIST_BOUND, took
    engine.thaw()
    assert "fz1" in run_ok(kernel, "%dockerrun list")


def test_cell_on_a_frozen_engine_fails_cleanly_and_leaves_nothing_stale(engine_kernel):
    kernel, engine = engine_kernel
    run_ok(kernel, "%%dockerrun fz2\nx = 41")
    engine.freeze()
    took, reply, traceback = timed_error(
        kernel, "%%dockerrun fz2 --timeout 1\nimport time\ntime.sleep(3)\nx = 0",
        timeout=120)
    assert reply["ename"] == "EngineUnavailable", traceback
    assert len(traceback) == 1 and "did not answer" in traceback[0], traceback
    assert took < FROZEN_CELL_BOUND, took
    engine.thaw()
    # The abandoned cell may start now that the engine wakes; it must neither
    # hold the instance ("busy") nor change x, and no kill sent while the
    # engine slept may land on these cells (they would end with exit code 137).
    values = []
    for step in range(4):
        out = run_ok(kernel, "%%dockerrun fz2\nimport time\ntime.sleep(0.5)\nx += 1\nprint(x)")
        values.append(int(out.split()[-1]))
    assert values == [42, 43, 44, 45]
    client = engine.client()
    try:
        [container] = client.containers.list(all=True, filters={"name": "fiddledock-fz2-"})
        assert container.status == "running"
    finally:
        client.close()


def ready_count(text):
    found = re.search(r"pool: (\d+) ready of (\d+)", text)
    assert found, text
    return int(found.group(1))


def test_pool_after_an_engine_restart_counts_no_dead_container(engine_kernel):
    kernel, engine = engine_kernel
    run_ok(kernel, "%dockerrun pool 2")
    deadline = time.monotonic() + 120
    while ready_count(run_ok(kernel, "%dockerrun pool")) < 2:
        assert time.monotonic() < deadline, "the pool did not fill"
        time.sleep(0.5)
    engine.restart()  # its containers stop with it
    client = engine.client()
    try:
        pooled = client.containers.list(all=True, filters={"name": "fiddledock_pool-"})
        assert pooled and all(c.status != "running" for c in pooled)
        assert ready_count(run_ok(kernel, "%dockerrun pool")) == 0
        # A new instance works, from a refilled pool or made afresh.
        assert run_ok(kernel, "%%dockerrun after\nprint(6 * 7)").strip() == "42"
        deadline = time.monotonic() + 120
        while ready_count(run_ok(kernel, "%dockerrun pool")) < 2:
            assert time.monotonic() < deadline, "the pool did not refill"
            time.sleep(0.5)
        ready = client.containers.list(filters={"name": "fiddledock_pool-",
                                                "status": "running"})
        assert len(ready) == 2
    finally:
        client.close()


@pytest.mark.parametrize("exc", [
    requests.exceptions.ReadTimeout("Read timed out. (read timeout=5)"),
    requests.exceptions.ConnectTimeout("Connection to engine timed out"),
    urllib3.exceptions.ReadTimeoutError(None, "/containers/json", "Read timed out."),
    socket.timeout("timed out"),
])
def test_every_timeout_becomes_the_one_line_engine_unavailable(exc):
    """Pure logic: whatever library raised the timeout, a cell sees the same line."""
    def silent_engine():
        raise exc
    with pytest.raises(EngineUnavailable) as caught:
        offline = docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41")
        DockerBackend(offline).call(silent_engine, within=2.5)
    assert "did not answer within 2.5 s" in str(caught.value)
    assert len(caught.value._render_traceback_()) == 1
