"""A class in one kernel: many instances, each shown right in `list` and the panel.

Against the real engine: `%dockerrun list` and the panel's rows with a dozen
instances (status, memory and CPU of each), the CPU column once a sample is
one-shot, a connection whose descriptor is numbered above 1023, and the
open-files limit the extension raises.
"""

import html
import os
import re
import resource
import socket

import pytest

from conftest import wait_for
from fake_backend import FakeBackend

from fiddledock_magic._backend import Usage
from fiddledock_magic._config import DockerRun
from fiddledock_magic._docker_fanout import parse_answer
from fiddledock_magic._extension import OPEN_FILES, manager_of, raise_open_files_limit
from fiddledock_magic._manager import InstanceManager
from fiddledock_magic._spec import container_name, scope_id

NAMES = ["class%02d" % i for i in range(12)]


def list_rows(out):
    """`%dockerrun list`'s rows: instance name -> its line."""
    return {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()
            and not line.startswith("(")}


def cpu_of(line):
    return float(re.search(r"([0-9.]+)%$", line.strip()).group(1))


def text(widget):
    return html.unescape(re.sub(r"<[^>]+>", "", widget.value))


def test_list_and_panel_show_each_of_twelve_instances(shell, own_scope, line_magic,
                                                      docker_client):
    line_magic("create " + " ".join(NAMES))
    stopped = NAMES[-1]
    docker_client.api.stop(container_name(stopped, own_scope), timeout=1)
    # The first list takes two readings per container for CPU; the second one reading,
    # its CPU from the first's.
    for _ in range(2):
        rows = list_rows(line_magic("list"))
        assert sorted(rows) == NAMES
        for name in NAMES[:-1]:
            assert " ready " in rows[name] and "MiB / 512.0 MiB" in rows[name], rows[name]
            assert 0 <= cpu_of(rows[name]) < 200, rows[name]
        assert " stopped " in rows[stopped] and "- / 512.0 MiB" in rows[stopped]
        assert rows[stopped].rstrip().endswith("-")  # no CPU figure for a stopped one

    panel = shell.run_line_magic("dockerrun", "panel")
    try:
        assert panel.model.refresh()
        assert [r.name for r in panel.table.children] == NAMES
        for name in NAMES:
            status, memory, cpu = (text(panel.rows[name].cells[i]) for i in (2, 4, 5))
            if name == stopped:
                assert (status, memory, cpu) == ("\u25cf stopped", "- / 512.0 MiB", "-")
            else:
                assert status == "\u25cf ready" and "MiB / 512.0 MiB" in memory, name
                assert cpu.endswith("%"), (name, cpu)
        # a cell's result redraws its row
        shell.run_cell("%%%%dockerrun %s\nprint(1)" % NAMES[3])
        assert text(panel.rows[NAMES[3]].result).startswith("\u25cf ok")
    finally:
        panel.model.wait()
        panel._view_count = 0


def test_cpu_column_shows_the_instance_that_computes(shell, own_scope, line_magic,
                                                     docker_client):
    line_magic("create hot cold")
    cid = docker_client.api.inspect_container(container_name("hot", own_scope))["Id"]
    busy = docker_client.api.exec_create(cid, ["timeout", "30", "python3", "-c",
                                               "while True: pass"], user="1000")
    docker_client.api.exec_start(busy["Id"], detach=True)
    seen = []

    def hot_shows():
        rows = list_rows(line_magic("list"))
        seen.append((rows["hot"], rows["cold"]))
        return cpu_of(rows["hot"]) > 20 and cpu_of(rows["cold"]) < cpu_of(rows["hot"]) / 2
    # twice: the second list's CPU comes from the first list's reading (one-shot)
    wait_for(hot_shows, "the busy instance's CPU figure", timeout=25)
    wait_for(hot_shows, "the busy instance's CPU figure again", timeout=25)
    rows = {r.name: r for r in manager_of(shell).statuses()}
    assert rows["hot"].cpu_percent > rows["cold"].cpu_percent


def test_a_connection_on_a_descriptor_above_1023_still_runs_cells(shell, own_scope, run):
    # select() cannot watch such a descriptor; a kernel with many instances (and
    # the raised limit) gets them.
    raise_open_files_limit()
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1500:
        pytest.fail("the open-files limit could not be raised above 1500 here")
    assert run("print(6 * 7)", "high")[1] == "42\n"
    conn = manager_of(shell).instances["high"].connection
    high = socket.socket(fileno=os.dup2(conn.sock.fileno(), 1400))
    conn.sock.close()
    conn.sock = high
    assert run("print(7 * 6)", "high")[1] == "42\n"
    assert manager_of(shell).instances["high"].connection.sock.fileno() == 1400


def test_loading_raises_a_low_open_files_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        raise_open_files_limit()
        wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_engine_answers_are_read_whole_or_refused():
    # the engine's answers as they come over the socket (chunked, or with a length)
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
    assert parse_answer(chunked) == (200, {"a": 1})
    sized = b"HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\n{\"message\": \"gone\"}\n"
    assert parse_answer(sized) == (404, {"message": "gone"})
    for cut in (chunked[:-12], chunked[:30]):
        with pytest.raises(ValueError):
            parse_answer(cut)


def test_an_empty_sample_from_the_engine_is_asked_for_once_more():
    # The engine sends a sample with no figures when reading a container failed this
    # time (under load); pure logic, over the in-memory backend.
    backend = FakeBackend()
    manager = InstanceManager(DockerRun(scope="/notebooks/crowd-%s.ipynb" % os.getpid()),
                              backend=backend)
    labels = {"fiddledock.scope": scope_id(manager.scope)}
    once = backend.add(container_name("once", manager.scope), labels).id
    never = backend.add(container_name("never", manager.scope), labels).id
    real, empty = backend.stats, set()

    def stats(container_id):
        if container_id == never or container_id not in empty:
            empty.add(container_id)
            return Usage(memory_used=None, cpu_percent=None)
        return real(container_id)
    backend.stats = stats
    try:
        rows = {row.name: row for row in manager.statuses()}
    finally:
        manager.close()
    assert rows["once"].memory_used == 10 << 20 and "no stats" not in rows["once"].note
    assert rows["never"].memory_used is None
    assert rows["never"].note == "no stats: the engine gave no figures for it this time"
