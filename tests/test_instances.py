"""The `%dockerrun` line magic against the real engine: what a user manages and sees."""

import os
import time
import uuid

import docker
import pytest
from IPython.core.error import UsageError

from conftest import _remove_scope, missing
from fiddledock_magic import InstanceNotFound
from fiddledock_magic._extension import manager_of
from fiddledock_magic._spec import InstanceSpec, container_name

MiB = 1 << 20


@pytest.fixture
def scoped(own_scope):
    return own_scope


@pytest.fixture
def line(line_magic):
    return line_magic


def inspect(client, name, scope):
    return client.api.inspect_container(container_name(name, scope))


def exists(client, name, scope):
    try:
        inspect(client, name, scope)
        return True
    except docker.errors.NotFound:
        return False


# --- bad input: short usage errors that say what is allowed -------------------------

@pytest.mark.parametrize("args, expected", [
    ("create {n} --memory lots", "memory must be a size like 512m or 1g, not 'lots'"),
    ("create {n} --cpus -1", "cpus must be between 0.01 and 256"),
    ("create {n} --cpus many", "invalid float value: 'many'"),
    ("create {n} --pids 2", "pids must be at least 16"),
    ("create {n} --runtime kata", "invalid choice: 'kata' (choose from 'runc', 'runsc')"),
    ("create {n} --network host", "invalid choice: 'host' (choose from 'none', 'bridge')"),
    ("create {n} --env NOVALUE", "--env takes KEY=VALUE"),
    ("create {n} --image fiddledock-no-such-image:404",
     "image 'fiddledock-no-such-image:404' is not installed in Docker here"),
    ("create", "the following arguments are required: name"),
    ("create bad/name", "instance names are 1-63 letters"),
    ("frobnicate", "unknown subcommand 'frobnicate': use one of cleanup, create, delete"),
    ("pool -3", "0 or more"),
    ("", "a subcommand is needed"),
])
def test_bad_arguments_are_short_usage_errors(shell, scoped, docker_client, unique_name,
                                              args, expected):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("dockerrun", args.format(n=unique_name))
    message = str(info.value)
    assert expected in message
    assert "Traceback" not in message and len(message.splitlines()) <= 2
    assert not exists(docker_client, unique_name, scoped)


def test_argument_errors_show_the_subcommand_usage(shell, scoped):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("dockerrun", "create x --cpus many")
    assert str(info.value).splitlines()[1].startswith("usage: %dockerrun create [--image IMAGE]")


def test_unknown_instance_is_a_one_line_error(shell, scoped):
    for cmd in ("delete", "restart", "reset"):
        with pytest.raises(InstanceNotFound) as info:
            shell.run_line_magic("dockerrun", "%s nosuch" % cmd)
        line, = info.value._render_traceback_()
        assert "no instance named 'nosuch'" in line and line.startswith("\x1b[1mFiddleDock:\x1b[0m ")


# --- create: limits and hardening as the engine sees them ---------------------------

def test_create_limits_are_in_the_host_config_and_felt_inside(shell, scoped, line, run,
                                                               docker_client):
    out = line("create lim --memory 300m --cpus 0.5 --pids 64 --disk 32m --env GREETING=hi")
    assert out == "created instance 'lim'\n"
    host = inspect(docker_client, "lim", scoped)["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 300 * MiB
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert "size=%d" % (32 * MiB) in host["Tmpfs"]["/tmp"]
    _, out, _ = run(
        "import os, shutil\n"
        "print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip())\n"
        "print(open('/sys/fs/cgroup/pids/pids.max').read().strip())\n"
        "print(shutil.disk_usage('/tmp').total // 2**20, os.environ['GREETING'])", "lim")
    assert out.split() == [str(300 * MiB), "64", "32", "hi"]


def test_hardened_defaults_through_the_docker_api(shell, scoped, run, docker_client,
                                                  default_image, monkeypatch):
    monkeypatch.setenv("FIDDLEDOCK_HOST_SECRET", "must-not-leak")
    _, out, _ = run(
        "import os\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "print(os.getuid(), os.getgid(), status['CapEff'].strip(), status['NoNewPrivs'].strip())\n"
        "print(open('/proc/1/comm').read().strip())\n"
        "try:\n    open('/usr/pwned', 'w')\nexcept OSError as e:\n    print(e.strerror)\n"
        "print(sorted(n for n in os.listdir('/sys/class/net')))\n"
        "print('FIDDLEDOCK_HOST_SECRET' in os.environ)", "hard")
    uid_line, init, rofs, nets, leaked = out.splitlines()
    assert uid_line == "1000 1000 0000000000000000 1"   # non-root, no capabilities
    assert init == "docker-init"                          # reaps zombies
    assert rofs == "Read-only file system"
    assert nets == "['lo']"                               # no network but loopback
    assert leaked == "False"

    info = inspect(docker_client, "hard", scoped)
    host = info["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["Privileged"] is False
    # root in the container (the agent, and the relays and file helpers it
    # accepts) keeps only these; the cell runs as uid 1000 with none (above)
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETUID"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == host["MemorySwap"] == 512 * MiB
    assert host["PidsLimit"] == 256
    assert host["NanoCpus"] == 1_000_000_000
    assert host["Init"] is True
    assert host["LogConfig"]["Type"] == "none"
    assert not host["Binds"] and info["Mounts"] == []     # no host folders, no docker.sock
    assert not host.get("Devices")
    assert info["Config"]["User"] == "0:0"  # the agent; it runs cells as 1000 (above)
    assert info["Config"]["OpenStdin"] is False  # clients come through exec'd relays
    # The environment: only what FiddleDock sets and what the image declares.
    keys = {item.split("=", 1)[0] for item in info["Config"]["Env"]}
    spec_env, _ = InstanceSpec(image=default_image).container_config([], {})
    image_env = docker_client.api.inspect_image(default_image)["Config"]["Env"] or []
    assert keys == set(spec_env["environment"]) | {e.split("=", 1)[0] for e in image_env}
    assert not any("must-not-leak" in item for item in info["Config"]["Env"])


def test_network_bridge_is_opt_in_per_instance(shell, scoped, line, docker_client):
    # Configuration only: no traffic leaves the machine in tests.
    line("create net --network bridge")
    assert inspect(docker_client, "net", scoped)["HostConfig"]["NetworkMode"] == "bridge"


# --- list, statuses -------------------------------------------------------------------

def test_list_shows_name_image_status_uptime_memory_cpu(shell, scoped, line, run,
                                                          default_image):
    run("x = 1", "alpha")
    line("create beta --memory 256m")
    line("use beta")
    out = line("list")
    header, rule, *rows = out.splitlines()
    assert header.split() == ["name", "image", "status", "uptime", "memory", "CPU"]
    alpha = next(r for r in rows if r.startswith("alpha "))
    beta = next(r for r in rows if r.startswith("beta *"))  # * marks the default instance
    for row, limit in ((alpha, "512.0 MiB"), (beta, "256.0 MiB")):
        assert default_image in row and " ready " in row
        assert "MiB / %s" % limit in row and row.endswith("%")
    statuses = {s.name: s for s in manager_of(shell).statuses()}
    a = statuses["alpha"]
    assert a.status == "ready" and not a.is_default and statuses["beta"].is_default
    assert 1 * MiB < a.memory_used < 100 * MiB and a.memory_limit == 512 * MiB
    assert a.cpu_percent is not None and 0 <= a.cpu_percent < 100
    assert a.uptime.total_seconds() > 0


def test_list_of_stopped_and_empty(shell, scoped, line, run, docker_client):
    assert line("list") == "no instances in this notebook\n"
    run("pass", "gone")
    docker_client.api.stop(container_name("gone", scoped), timeout=1)
    out = line("list")
    row = next(r for r in out.splitlines() if r.startswith("gone"))
    assert " stopped " in row and "- / 512.0 MiB" in row
    assert manager_of(shell).statuses()[0].uptime is None


def test_statuses_of_many_instances_are_sampled_side_by_side(shell, scoped, line):
    names = ["m%d" % i for i in range(6)]
    for name in names:
        line("create %s" % name)
    start = time.monotonic()
    rows = manager_of(shell).statuses()
    elapsed = time.monotonic() - start
    assert [r.name for r in rows] == names
    assert all(r.memory_used for r in rows)
    # One stats sample takes about a second on the engine; one after another this
    # would take six or more.
    assert elapsed < 3.5, elapsed


def test_status_probe_does_not_count_as_use(shell, scoped, run, docker_client):
    shell.run_line_magic("config", "DockerRun.idle_timeout = 3")
    try:
        run("pass", "probed")
        seen = []
        deadline = time.monotonic() + 12
        # A panel refreshing all the time must not keep an unused instance alive.
        while inspect(docker_client, "probed", scoped)["State"]["Running"]:
            assert time.monotonic() < deadline, "status probes kept the instance alive"
            seen += [r.status for r in manager_of(shell).statuses()]
        assert "ready" in seen
    finally:
        shell.run_line_magic("config", "DockerRun.idle_timeout = 3600.0")


# --- delete, restart, reset, use, cleanup ----------------------------------------------

def test_delete_and_delete_all_stay_in_this_notebook(shell, scoped, line, run, docker_client,
                                                     default_image):
    other_scope = "pytest-other-%s" % uuid.uuid4().hex[:8]
    other = manager_of(shell).__class__(type(manager_of(shell).config)(scope=other_scope))
    try:
        other.create("keep", other.default_spec())
        run("pass", "d1")
        run("pass", "d2")
        run("pass", "d3")
        assert line("delete d1") == "deleted instance 'd1'\n"
        assert not exists(docker_client, "d1", scoped)
        assert line("delete --all") == "deleted 2 instance(s)\n"
        assert not exists(docker_client, "d2", scoped) and not exists(docker_client, "d3", scoped)
        assert exists(docker_client, "keep", other_scope)
    finally:
        other.close()
        _remove_scope(docker_client, other_scope)


def test_restart_gives_a_new_container_with_the_same_settings(shell, scoped, line, run,
                                                              docker_client):
    line("create r --memory 200m --env COLOUR=blue")
    run("x = 42", "r")
    before = inspect(docker_client, "r", scoped)["Id"]
    assert line("restart r") == ("restarted instance 'r': it starts from scratch, its variables "
                                 "and files are gone\n")
    after = inspect(docker_client, "r", scoped)
    assert after["Id"] != before
    assert after["HostConfig"]["Memory"] == 200 * MiB
    _, out, _ = run("import os\nprint(os.environ['COLOUR'], 'x' in globals())", "r")
    assert out == "blue False\n"


def test_reset_keeps_the_container_but_not_the_namespace(shell, scoped, line, run,
                                                         docker_client):
    run("x = 42\nopen('/tmp/kept', 'w').write('file')", "rs")
    before = inspect(docker_client, "rs", scoped)["Id"]
    assert line("reset rs") == "reset instance 'rs': its variables are cleared, its files are kept\n"
    assert inspect(docker_client, "rs", scoped)["Id"] == before
    _, out, _ = run("print('x' in globals(), open('/tmp/kept').read())", "rs")
    assert out == "False file\n"


def test_use_sets_the_instance_of_a_bare_cell(shell, scoped, line, run):
    run("where = 'here'", "u1")
    assert line("use u1") == "default instance is now 'u1'\n"
    value = shell.run_cell_magic("dockerrun", "", "where")
    assert repr(value) == "'here'"


def test_cleanup_removes_stopped_and_orphaned_but_keeps_running(shell, scoped, line, run,
                                                                docker_client):
    from fiddledock_magic import _pool
    manager = manager_of(shell)
    run("pass", "up")
    run("pass", "down")
    docker_client.api.stop(container_name("down", scoped), timeout=1)
    # A pool container whose kernel is gone: a dead pid on this host.
    labels = manager.labels(None)
    dead_pid = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 100000
    labels[_pool.LABEL_POOL] = "%s:%d" % (os.uname().nodename, dead_pid)
    from fiddledock_magic._spec import pool_container_name
    orphan = manager.start_container(pool_container_name(scoped), None,
                                     manager.default_spec(), labels)
    orphan.disconnect()
    out = line("cleanup")
    assert out.startswith("removed 2 stopped or leftover container(s) of this notebook: ")
    assert "down" in out
    assert exists(docker_client, "up", scoped) and not exists(docker_client, "down", scoped)
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_container(orphan.container_id)
    assert line("cleanup") == "nothing to clean up of this notebook\n"
    _, out, _ = run("print('still here')", "up")
    assert out == "still here\n"


# --- gVisor ---------------------------------------------------------------------------

def _runsc_registered(client):
    return "runsc" in (client.info().get("Runtimes") or {})


def test_runsc_instance_runs_under_gvisor(shell, scoped, line, run, docker_client):
    if not _runsc_registered(docker_client):
        missing("runsc is not registered with the engine (scripts/ensure-engine.sh --with-runsc)")
    line("create gv --runtime runsc")
    assert inspect(docker_client, "gv", scoped)["HostConfig"]["Runtime"] == "runsc"
    _, out, _ = run("import platform\nx = 5\nprint(platform.release())", "gv")
    assert out == "4.4.0\n"  # gVisor's kernel, not the host's
    _, out, _ = run("print(x * 2)", "gv")
    assert out == "10\n"


# --- configuration ----------------------------------------------------------------------

def test_config_refuses_bad_values_and_new_instances_use_good_ones(shell, scoped, run,
                                                                   docker_client, caplog):
    config = manager_of(shell).config
    for setting in ("memory = 'lots'", "cpus = -1", "runtime = 'kata'", "pool_size = -1",
                    "network = 'host'", "idle_timeout = 0"):
        shell.run_line_magic("config", "DockerRun." + setting)
    said = [r.getMessage() for r in caplog.records]  # what %config shows the user
    assert "memory must be a size like 512m or 1g, not 'lots'" in said
    assert "runtime must be one of runc, runsc, not 'kata'" in said
    assert "pool_size must be 0 or more, not -1" in said
    assert (config.memory, config.cpus, config.runtime, config.pool_size, config.network,
            config.idle_timeout) == ("512m", 1.0, "runc", 0, "none", 3600.0)
    shell.run_line_magic("config", "DockerRun.memory = '384m'")
    try:
        run("pass", "conf")
        assert inspect(docker_client, "conf", scoped)["HostConfig"]["Memory"] == 384 * MiB
    finally:
        shell.run_line_magic("config", "DockerRun.memory = '512m'")
