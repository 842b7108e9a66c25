"""Pure logic over the in-memory backend: no engine, a few seconds.

Cleanup rules, the pool's reconcile and take, restart's settings round trip
and how a stopped container is reported. These check decisions, not Docker:
the real-engine tests (test_instances.py, test_lifecycle.py) are the evidence
that the features work.
"""

import os
import socket
import time
import uuid

import pytest

from fake_backend import FakeBackend
from fiddledock_magic._config import DockerRun
from fiddledock_magic._errors import EngineUnavailable, PoolSizeInvalid
from fiddledock_magic._manager import InstanceManager
from fiddledock_magic._pool import LABEL_KEY, LABEL_POOL
from fiddledock_magic._spec import (InstanceSpec, container_name, is_pool_container_name,
                                    pool_container_name, scope_id)


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def manager(backend):
    made = InstanceManager(DockerRun(scope="/notebooks/%s.ipynb" % uuid.uuid4().hex),
                           backend=backend)
    yield made
    made.close()


def scope_labels(scope):
    return {"fiddledock.scope": scope_id(scope)}


def add_instance(backend, name, scope, **state):
    return backend.add(container_name(name, scope), scope_labels(scope), **state)


def add_pool_container(backend, scope, creator, **state):
    labels = dict(scope_labels(scope), **{LABEL_POOL: creator, LABEL_KEY: "k"})
    return backend.add(pool_container_name(scope), labels, **state)


def dead_pid():
    return max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 100000


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached within %g s" % seconds
        time.sleep(0.02)


# --- cleanup -------------------------------------------------------------------------------

def test_cleanup_removes_stopped_instances_and_orphaned_pool_containers_of_this_scope(
        manager, backend):
    scope = manager.scope
    here = socket.gethostname()
    kept = [add_instance(backend, "up", scope),
            add_pool_container(backend, scope, "%s:%d" % (here, os.getpid())),  # this kernel's
            add_pool_container(backend, scope, "elsewhere:1"),  # another machine's: idle-stops
            add_instance(backend, "theirs", "/other.ipynb", state="exited")]  # other scope
    add_instance(backend, "down", scope, state="exited")
    add_instance(backend, "crashed", scope, state="dead", exit_code=139)
    add_instance(backend, "never", scope, state="created")
    orphan = add_pool_container(backend, scope, "%s:%d" % (here, dead_pid()))
    stopped = add_pool_container(backend, scope, "elsewhere:1", state="exited")  # nobody's

    removed = manager.cleanup()

    assert sorted(removed) == sorted(["crashed", "down", "never", orphan.name, stopped.name])
    assert sorted(backend.containers) == sorted(c.id for c in kept)
    assert manager.cleanup() == []


def test_cleanup_of_all_scopes_takes_other_notebooks_stopped_instances_too(manager, backend):
    running = add_instance(backend, "up", "/other.ipynb")
    add_instance(backend, "theirs", "/other.ipynb", state="exited")
    add_instance(backend, "mine", manager.scope, state="exited")
    removed = manager.cleanup(all_scopes=True)
    assert sorted(removed) == sorted(["mine", container_name("theirs", "/other.ipynb")])
    assert list(backend.containers) == [running.id]


def test_cleanup_forgets_the_connection_to_a_removed_instance(manager, backend):
    inst = manager.get("gone")
    backend.kill(inst.container_id)
    assert manager.cleanup() == ["gone"]
    assert "gone" not in manager.instances and inst.connection is None


# --- stopped status ------------------------------------------------------------------------

@pytest.mark.parametrize("state, exit_code, oom, status, note", [
    ("exited", 0, False, "stopped", "it ended with exit code 0"),      # idle self-stop
    ("exited", 137, False, "stopped", "it ended with exit code 137"),  # killed
    ("exited", 143, False, "stopped", "it ended with exit code 143"),  # docker stop
    ("exited", 1, False, "crashed", "it ended with exit code 1"),       # crashed
    ("dead", 0, False, "crashed", "it ended with exit code 0"),         # the engine says dead
    ("created", 0, False, "stopped", "it was never started"),
    ("exited", 137, True, "crashed", "it ran out of memory"),
])
def test_a_stopped_container_is_reported_as_it_ended(manager, backend, state, exit_code, oom,
                                                     status, note):
    add_instance(backend, "x", manager.scope, state=state, exit_code=exit_code, oom_killed=oom)
    (row,) = manager.statuses()
    assert (row.name, row.status, row.note) == ("x", status, note)
    assert row.memory_used is None and row.cpu_percent is None and row.uptime is None


def test_running_instances_report_usage_and_whether_this_kernel_is_connected(manager, backend):
    manager.get("mine")
    add_instance(backend, "elsewhere", manager.scope)
    add_pool_container(backend, manager.scope, "elsewhere:1")  # never a row
    rows = {row.name: row for row in manager.statuses()}
    assert sorted(rows) == ["elsewhere", "mine"]
    assert rows["mine"].status == "ready" and rows["mine"].is_default is False
    assert (rows["elsewhere"].status, rows["elsewhere"].note) == (
        "not connected", "this kernel has not used it yet; the next cell connects to it")
    assert rows["mine"].memory_used == 10 << 20 and rows["mine"].cpu_percent == 1.5
    assert rows["mine"].memory_limit == 512 << 20 and rows["mine"].uptime is not None


def test_a_stopped_instance_is_restarted_by_its_next_use_and_says_why(manager, backend):
    add_instance(backend, "x", manager.scope, state="exited", oom_killed=True)
    notices = []
    inst = manager.get("x", notice=notices.append)
    assert notices == ["instance 'x' was not running (it ran out of memory and "
                       "was stopped); restarted it: its previous state is lost"]
    assert backend.inspect(inst.container_id).running


# --- restart: settings -> labels -> settings -------------------------------------------------

def test_restart_makes_a_new_container_with_the_same_settings(manager, backend):
    spec = InstanceSpec(image="fiddledock-sandbox:2", memory="256m", cpus=0.5, pids=64,
                        disk="32m", env={"GREETING": "hi there", "EMPTY": ""}).validate()
    first = manager.create("r", spec)
    manager.restart("r")
    (container,) = backend.containers.values()
    assert container.id != first.container_id and container.name == container_name("r",
                                                                                  manager.scope)
    again = InstanceSpec.from_container(backend.inspect(container.id), manager.default_spec())
    assert again == spec
    assert manager.instances["r"].container_id == container.id
    config = manager.config
    assert backend.boots[-1] == (container.id, {"idle_timeout": config.idle_timeout,
                                                "output_limit": config.output_limit,
                                                "interrupt_grace": config.interrupt_grace})


def test_settings_a_label_does_not_hold_come_from_the_defaults(manager, backend):
    bare = add_instance(backend, "old", manager.scope)  # made without settings labels
    spec = InstanceSpec.from_container(backend.inspect(bare.id), manager.default_spec())
    assert spec == manager.default_spec()


# --- the pool -----------------------------------------------------------------------------

def pool_names(backend):
    return [n for n in backend.names() if is_pool_container_name(n)]


def test_the_pool_fills_hands_out_a_matching_container_and_refills(manager, backend):
    manager.pool.resize(2, wait=True, timeout=20)
    assert manager.pool.ready_count() == 2 and len(pool_names(backend)) == 2
    pooled = set(backend.containers)
    inst = manager.create("fast", manager.default_spec())
    assert inst.container_id in pooled and inst.name == "fast"
    assert inst.backend is backend
    assert backend.inspect(inst.container_id).name == container_name("fast", manager.scope)
    wait_until(lambda: manager.pool.ready_count() == 2)
    assert len(pool_names(backend)) == 2
    assert manager.get("fast") is inst


def test_other_settings_are_not_served_from_the_pool(manager, backend):
    manager.pool.resize(1, wait=True, timeout=20)
    pooled = set(backend.containers)
    inst = manager.create("big", InstanceSpec(image="fiddledock-sandbox:2", memory="1g"))
    assert inst.container_id not in pooled
    assert manager.pool.ready_count() == 1


def test_new_default_settings_replace_the_pooled_containers(manager, backend):
    manager.pool.resize(2, wait=True, timeout=20)
    old = set(backend.containers)
    manager.config.memory = "256m"
    manager.pool.wait(20)
    wait_until(lambda: len(pool_names(backend)) == 2 and not old & set(backend.containers))
    assert all(c.labels["fiddledock.memory"] == "256m" for c in backend.containers.values())


def test_emptying_the_pool_removes_its_containers(manager, backend):
    manager.pool.resize(2, wait=True, timeout=20)
    manager.pool.resize(0, wait=True, timeout=20)
    assert pool_names(backend) == [] and manager.pool.ready_count() == 0


def test_a_starting_pool_removes_orphans_of_its_scope_only(manager, backend):
    here = socket.gethostname()
    orphan = add_pool_container(backend, manager.scope, "%s:%d" % (here, dead_pid()))
    foreign = add_pool_container(backend, "/other.ipynb", "%s:%d" % (here, dead_pid()))
    manager.pool.resize(1, wait=True, timeout=20)
    assert orphan.id not in backend.containers and foreign.id in backend.containers


def test_a_pool_container_that_died_is_not_handed_out(manager, backend):
    manager.pool.resize(1, wait=True, timeout=20)
    (pooled,) = backend.containers
    backend.kill(pooled)
    inst = manager.create("x", manager.default_spec())
    assert inst.container_id != pooled


def test_a_missing_image_is_a_pool_error_not_a_crash(manager, backend):
    backend.image_names.clear()
    manager.pool.resize(1)
    assert manager.pool.wait(20) is False
    assert "image 'fiddledock-sandbox:2' not found on the Docker engine; the pool cannot " \
        "fill" in manager.pool.describe()
    assert pool_names(backend) == []


def test_a_negative_pool_size_is_the_packages_own_error(manager):
    with pytest.raises(PoolSizeInvalid) as caught:
        manager.pool.resize(-1)
    assert caught.value.size == -1


def test_an_engine_that_does_not_answer_is_one_error(manager, backend):
    backend.down = True
    with pytest.raises(EngineUnavailable):
        manager.get("x")


# --- Docker's JSON as records (the one place that reads it) ----------------------------------

def test_docker_inspect_data_becomes_a_container_record():
    from fiddledock_magic._docker_backend import container_of_inspect, container_of_summary
    never = container_of_inspect({
        "Id": "abc", "Name": "/fiddledock-x-12345678",
        "State": {"Status": "created", "Running": False, "ExitCode": 0, "OOMKilled": False,
                  "StartedAt": "0001-01-01T00:00:00Z"},
        "Config": {"Labels": {"fiddledock": "1"}, "Image": "img:1", "User": "0:0",
                   "Env": ["A=b=c"]},
        "HostConfig": {"Memory": 0}})
    assert (never.name, never.state, never.running, never.started_at) == (
        "fiddledock-x-12345678", "created", False, None)
    assert (never.memory_limit, never.user, never.env, never.image) == (None, "0:0", ["A=b=c"],
                                                                         "img:1")
    oom = container_of_inspect({
        "Id": "def", "Name": "/y", "State": {"Status": "exited", "ExitCode": 137,
                                             "OOMKilled": True,
                                             "StartedAt": "2024-05-01T12:00:00.123456789Z"},
        "Config": {}, "HostConfig": {"Memory": 536870912}})
    assert (oom.exit_code, oom.oom_killed, oom.memory_limit, oom.labels) == (137, True,
                                                                              512 << 20, {})
    assert oom.started_at.isoformat() == "2024-05-01T12:00:00+00:00"
    row = container_of_summary({"Id": "abc", "Names": ["/fiddledock-x-1"], "State": "running",
                                "Labels": None, "Image": "img:1"})
    assert (row.name, row.running, row.labels, row.exit_code) == ("fiddledock-x-1", True, {},
                                                                  None)


def test_a_docker_stats_sample_becomes_usage():
    from fiddledock_magic._docker_backend import cpu_percent, memory_used
    sample = {"memory_stats": {"usage": 300, "stats": {"inactive_file": 100}},
              "cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000,
                            "online_cpus": 2},
              "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000}}
    assert memory_used(sample) == 200 and cpu_percent(sample) == 40.0
    assert memory_used({}) is None and cpu_percent({}) is None


def test_an_exec_the_engine_could_not_start_is_named_not_called_garbage():
    # Under gVisor a fork bomb can make the relay's exec fail; the engine then
    # writes its error as text on the exec's stdout, where a frame should be.
    from fiddledock_magic._errors import AgentError
    from fiddledock_magic._protocol import AgentConnection, StreamDemux
    text = (b"OCI runtime exec failed: exec failed: unable to start container process: "
            b"read init-p: connection reset by peer: unknown\r\n")
    ours, engine = socket.socketpair()
    try:
        engine.sendall(StreamDemux.HEADER.pack(1, len(text)) + text)
        with pytest.raises(AgentError) as caught:
            AgentConnection(ours).recv(timeout=5)
    finally:
        engine.close()
        ours.close()
    assert str(caught.value) == (
        "the engine could not start a process in the container (OCI runtime exec failed: "
        "exec failed: unable to start container process: read init-p: connection reset by "
        "peer: unknown); restart the instance")
