"""Shared fixtures: a real Docker engine, a real IPython shell, a real kernel.

Under CI=true a test that needs Docker fails when no engine is reachable; it
never skips. Each test session uses its own scope, so its instances never
collide with another run's, and removes them at the end.
"""

import os
import queue
import re
import time
import uuid

import docker
import pytest
from IPython.testing.globalipapp import start_ipython
from jupyter_client.manager import start_new_kernel

from fiddledock_magic._extension import manager_of
from fiddledock_magic._spec import scope_id

IN_CI = os.environ.get("CI", "").lower() == "true"
SESSION_SCOPE = "pytest-%s" % uuid.uuid4().hex[:8]


def missing(message):
    """A part the test needs is not here: under CI that fails, elsewhere it skips."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _docker_client():
    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception as exc:  # any failure means: no engine
        missing("no Docker engine reachable (%s); run scripts/ensure-engine.sh" % exc)


@pytest.fixture(scope="session")
def docker_client():
    return _docker_client()


@pytest.fixture(scope="session")
def default_image(docker_client):
    """The default sandbox image, built if missing."""
    from fiddledock_magic import _image
    from fiddledock_magic._docker_images import DockerImages
    images = DockerImages(docker_client.api)
    if not images.exists(_image.DEFAULT_IMAGE):
        _image.build_default_image(images, _image.DEFAULT_IMAGE, progress=print)
    return _image.DEFAULT_IMAGE


def _remove_scope(client, scope):
    for c in client.containers.list(all=True, filters={"label": "fiddledock.scope=%s" % scope_id(scope)}):
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture(scope="session")
def shell(docker_client, default_image):
    """A real IPython InteractiveShell with the extension loaded (one per session)."""
    ip = start_ipython()
    ip.run_line_magic("load_ext", "fiddledock_magic")
    ip.run_line_magic("config", "DockerRun.scope = %r" % SESSION_SCOPE)
    yield ip
    ip.run_line_magic("unload_ext", "fiddledock_magic")
    _remove_scope(docker_client, SESSION_SCOPE)


@pytest.fixture
def unique_name():
    return "t%s" % uuid.uuid4().hex[:8]


# The line a cell that creates its instance begins with (tests/test_teaching.py
# checks it); the run fixture leaves it out of the cell's own stderr.
CREATED = re.compile(r"\x1b\[1m\[fiddledock\]\x1b\[0m created new instance '[^']*'\n")


@pytest.fixture
def run(shell, capsys):
    """run(cell, name, opts) -> (value, stdout, stderr) through the real magic."""
    def _run(cell, name="default", opts=""):
        capsys.readouterr()
        value = shell.run_cell_magic("dockerrun", ("%s %s" % (name, opts)).strip(), cell)
        out, err = capsys.readouterr()
        return value, out, CREATED.sub("", err, count=1)
    return _run


class Kernel:
    """A real ipykernel with the extension loaded, driven by jupyter_client."""

    def __init__(self, scope, env=None):
        kenv = dict(os.environ)
        kenv.update(env or {})
        kenv["JPY_SESSION_NAME"] = scope
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=kenv)
        self.execute("%load_ext fiddledock_magic")

    def execute(self, code, timeout=60, allow_stdin=False, stdin_handler=None, collect=None):
        """Run code; returns (reply content, [(arrival time, iopub msg)]).

        ``collect``: a list the iopub messages are appended to as they come,
        for another thread to watch a running cell.
        """
        kc = self.kc
        msg_id = kc.execute(code, allow_stdin=allow_stdin)
        msgs = [] if collect is None else collect
        deadline = time.monotonic() + timeout
        idle = False
        reply = None
        while not (idle and reply is not None):
            if time.monotonic() > deadline:
                raise TimeoutError("kernel did not finish %r" % code[:60])
            if stdin_handler is not None:
                try:
                    req = kc.get_stdin_msg(timeout=0.01)
                    kc.input(stdin_handler(req["content"]))
                except queue.Empty:
                    pass
            if reply is None:
                try:
                    r = kc.get_shell_msg(timeout=0.01)
                    if r["parent_header"].get("msg_id") == msg_id:
                        reply = r["content"]
                except queue.Empty:
                    pass
            try:
                m = kc.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            msgs.append((time.monotonic(), m))
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                idle = True
        return reply, msgs

    @property
    def pid(self):
        """The kernel process's pid."""
        return self.km.provisioner.process.pid

    def shutdown(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


# Kernel code: `_when_running(name, act)` calls act() from a thread once a cell
# of instance `name` has started in the container. A kernel runs one request at a
# time, so a panel click beside a running cell comes from a thread that an earlier
# cell started (as JupyterLab's comms-over-subshells run a click beside the cell).
WHEN_RUNNING = """
import threading, time
from fiddledock_magic._extension import manager_of
_manager = manager_of(get_ipython())
_seen = {}

def _when_running(name, act):
    def wait_then_act():
        deadline = time.monotonic() + 60
        while not getattr(_manager.instances.get(name), "running_cell", False):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        time.sleep(1.5)  # the cell's code has started in the container
        act()
    threading.Thread(target=wait_then_act, daemon=True).start()
"""


def stream_text(msgs, name="stdout"):
    return "".join(m["content"]["text"] for _, m in msgs
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


def wait_for(condition, what, timeout=30):
    """Poll condition() until it is true and return its value; fail naming ``what``
    (e.g. "the idle instance to stop") if it is not true within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "waited %g s for %s" % (timeout, what)
        time.sleep(0.05)


def printed(msgs, text):
    """A condition for wait_for: ``text`` is in the stdout of ``msgs``, the list a
    running ``Kernel.execute(..., collect=msgs)`` appends to."""
    return lambda: text in stream_text(list(msgs))


def cell_printed(kernel, msg_id, text):
    """A condition for wait_for: the cell ``msg_id``, sent without waiting
    (``kernel.kc.execute``), has printed ``text`` on stdout. Reads the kernel's
    iopub channel, so nothing else may read it meanwhile."""
    seen = []

    def condition():
        try:
            m = kernel.kc.get_iopub_msg(timeout=0.1)
        except queue.Empty:
            return False
        if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "stream":
            seen.append(m["content"]["text"])
        return text in "".join(seen)
    return condition


def is_notice(msg):
    """A notice of FiddleDock's in a notebook: a display of its own (HTML, which wraps
    between words), not a stream."""
    return (msg["msg_type"] == "display_data"
            and "fiddledock-notice" in msg["content"]["data"].get("text/html", ""))


def notice_text(msgs):
    """The notices among a kernel's (time, msg) pairs, as text: one line each."""
    return "".join(m["content"]["data"]["text/plain"] + "\n" for _, m in msgs if is_notice(m))


def new_scope():
    """A scope (notebook) of its own, for kernels that must share or not share one."""
    return "pytest-life-%s" % uuid.uuid4().hex[:8]


def ok(reply):
    assert reply["status"] == "ok", reply.get("traceback") or reply
    return reply


def one_line_error(reply, ename):
    """The kernel's error reply: one line naming what happened, no Python traceback."""
    assert reply["status"] == "error", reply
    assert reply["ename"] == ename, reply
    assert len(reply["traceback"]) == 1, reply["traceback"]
    return reply["evalue"]


@pytest.fixture
def kernels(docker_client, default_image):
    """kernels(scope=None, env=None) -> a real kernel; all shut down and cleaned after."""
    made = []

    def _make(scope=None, env=None):
        scope = scope or new_scope()
        k = Kernel(scope, env)
        k.scope = scope
        made.append(k)
        return k
    yield _make
    for k in made:
        try:
            k.shutdown()
        except Exception:
            pass
    for scope in {k.scope for k in made}:
        _remove_scope(docker_client, scope)


@pytest.fixture
def kernel(docker_client, default_image):
    scope = "pytest-kernel-%s" % uuid.uuid4().hex[:8]
    k = Kernel(scope)
    yield k
    k.shutdown()
    _remove_scope(docker_client, scope)


# The browser harness (JupyterLab + headless Chromium): fixtures lab_server,
# chromium, lab_page for every test file; helpers via `from browser import ...`.
from browser import chromium, lab_page, lab_server  # noqa: E402,F401


# --- instance management: a scope (notebook) of one's own in the session shell -------

@pytest.fixture
def own_scope(shell, docker_client):
    """The session shell switched to a scope (notebook) of its own for one test.

    Restores the scope, the default instance and an empty pool afterwards, and
    removes every container of the test's scope.
    """
    manager = manager_of(shell)
    config = manager.config
    saved = (config.scope, config.default_instance, config.idle_timeout, config.image)
    scope = "pytest-own-%s" % uuid.uuid4().hex[:8]
    config.scope = scope
    yield scope
    config.pool_size = 0
    manager.pool.resize(0, wait=True)
    config.scope, config.default_instance, config.idle_timeout, config.image = saved
    _remove_scope(client=docker_client, scope=scope)


@pytest.fixture
def line_magic(shell, capsys):
    """line_magic('list') -> what `%dockerrun list` printed on stdout."""
    def _line(text):
        capsys.readouterr()
        shell.run_line_magic("dockerrun", text)
        return capsys.readouterr().out
    return _line
