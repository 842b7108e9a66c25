"""A second Docker engine for a test, in a network namespace of its own.

``second_engine`` starts one with scripts/test-engines.sh (a second or two
once the image template exists), yields a ``TestEngine`` and removes it
afterwards, frozen or not. Faults are replayed on it, never on the main
engine the other tests and helpers share.
"""

import os
import subprocess
import uuid

import pytest

from conftest import missing

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "scripts", "test-engines.sh")
START_TIMEOUT = 180  # the first start of a machine also loads the image into the template


def _script(*args, timeout=60):
    return subprocess.run(["bash", SCRIPT] + list(args), capture_output=True, text=True,
                          timeout=timeout)


class TestEngine:
    """One engine started by the script: its address and the faults to replay on it."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, name):
        self.name = name
        self.engine = "%s-1" % name
        self.host = "unix:///run/fiddledock-test/%s.sock" % self.engine

    def _do(self, *args):
        done = _script(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def freeze(self):
        """SIGSTOP the dockerd: it accepts connections and answers nothing."""
        self._do("freeze", self.engine)

    def thaw(self):
        self._do("thaw", self.engine)

    def restart(self):
        """Stop the dockerd (its containers stop with it) and start it on the same data."""
        self._do("restart", self.engine)

    def client(self):
        import docker
        return docker.DockerClient(base_url=self.host, timeout=30)


@pytest.fixture
def second_engine(default_image):
    if os.geteuid() != 0:
        missing("a second Docker engine needs root (network namespaces)")
    name = "fdt%s" % uuid.uuid4().hex[:8]
    done = _script("start", name, timeout=START_TIMEOUT)
    if done.returncode != 0:
        _script("stop", name)
        missing("could not start a second Docker engine: %s"
                % (done.stderr.strip().splitlines() or ["no output"])[-1])
    try:
        yield TestEngine(name)
    finally:
        stopped = _script("stop", name)
        assert stopped.returncode == 0, stopped.stderr
