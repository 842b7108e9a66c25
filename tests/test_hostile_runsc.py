"""The most hostile cells again, in instances under gVisor (``--runtime runsc``).

gVisor differs where it matters here: the host's out-of-memory killer can only
end the whole sandbox (its Sentry holds every process's memory), and the
engine's pids limit counts the Sentry's own host tasks. What the user sees must
still be one clean error and an instance the next cell can use.
"""

import pytest

from conftest import missing
from fiddledock_magic import CellTimeout, InstanceLost
from test_hostile import (COUNT_LIVE, FORKING_LOOP, config, container_of, create,  # noqa: F401
                          rendered)  # config, create: fixtures


@pytest.fixture
def gvisor(shell, docker_client, create):  # noqa: F811
    """create(name, opts) of an instance under runsc."""
    if "runsc" not in (docker_client.info().get("Runtimes") or {}):
        missing("runsc is not registered with the engine (scripts/ensure-engine.sh --with-runsc)")
    return lambda name, opts="": create(name, ("--runtime runsc " + opts).strip())


def test_memory_bomb_ends_the_sandbox_with_one_clear_error(run, gvisor, unique_name):
    gvisor(unique_name, "--memory 64m")
    run("x = 1", unique_name)
    with pytest.raises(InstanceLost) as info:
        run("hog = []\nwhile True:\n    hog.append(bytearray(4 << 20))", unique_name,
            "--timeout 60")
    message = str(info.value)
    assert "out of memory" in message, message
    assert "stopped answering" not in message  # seen at once, not after the time limit
    assert "urpc" not in message and "The next cell starts it again" in message
    _, out, err = run("print('x' in globals())", unique_name)
    assert out == "False\n" and "restarted it" in err


def test_fork_bomb_stops_at_the_process_limit_and_the_instance_stays(run, gvisor, unique_name):
    gvisor(unique_name, "--pids 32")  # under runsc this once failed to start at all
    run("x = 1", unique_name)
    code = ("import os, time\nfor i in range(6):\n    try:\n        os.fork()\n"
            "    except OSError:\n        pass\ntime.sleep(30)")
    with pytest.raises(CellTimeout) as info:
        run(code, unique_name, "--timeout 2")
    assert "its variables are kept" in str(info.value)
    _, out, _ = run("import subprocess\nprint(subprocess.run(['echo', 'spawned'],"
                    " capture_output=True).stdout.decode().strip(), x)", unique_name)
    assert out == "spawned 1\n"


def test_forking_loop_is_ended_with_the_timed_out_cell(run, gvisor, unique_name):
    gvisor(unique_name, "--pids 16")
    run("x = 1", unique_name)
    with pytest.raises(CellTimeout):
        run(FORKING_LOOP, unique_name, "--timeout 2")
    assert run(COUNT_LIVE + "print(live, x)", unique_name)[1] == "1 1\n"  # only the worker is left, its namespace kept


def test_docker_kill_between_cells_then_the_next_cell_restarts(run, gvisor, unique_name, shell,
                                                               docker_client):
    gvisor(unique_name)
    run("x = 1", unique_name)
    container = container_of(shell, docker_client, unique_name)
    container.kill()
    container.wait(timeout=30)
    _, out, err = run("print('x' in globals())", unique_name)
    assert out == "False\n"
    assert "restarted it" in err and "state is lost" in err


def test_child_process_ignoring_sigint_is_killed_and_the_namespace_kept(run, gvisor, unique_name,
                                                                        config):  # noqa: F811
    # gVisor's /proc has no SigIgn: the agent cannot see the worker waiting in os.system().
    gvisor(unique_name)
    config(interrupt_grace=1.0)
    run("kept = 'yes'", unique_name)
    code = "import os\nos.system('trap \"\" INT TERM; while :; do :; done')\nprint('not reached')"
    with pytest.raises(CellTimeout) as info:
        run(code, unique_name, "--timeout 1")
    text = rendered(info.value)
    assert "the processes it started were ended; its variables are kept" in text
    assert "\nnot reached" not in text  # never printed (the traceback shows the line)
    assert run("print(kept)", unique_name)[1] == "yes\n"
