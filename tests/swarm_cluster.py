"""The Swarm backend's test cluster and a notebook on it, for tests/test_swarm*.py.

``cluster`` (module fixture): scripts/test-cluster.sh's three engines on this
machine, each in a network namespace of its own; node 1 the manager, node 3
runs gVisor and carries the node label fiddledock.runtime=runsc; a registry on
the cluster's bridge holds the test image (``REGISTRY_IMAGE``); each node's engine
also listens with TLS at tcp://ADDR:2376 (``Cluster.client_certs``: the client's
certificates), reachable from inside the nodes' namespaces only. ``notebook``: a
real kernel pointed at its manager, as a notebook would be set up.
"""

import json
import os
import shutil
import subprocess
import threading
import uuid

import docker
import pytest

from conftest import Kernel, is_notice, missing, notice_text, printed, stream_text, wait_for
from fiddledock_magic._image import DEFAULT_IMAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "test-cluster.sh")
RUN_DIR = "/run/fiddledock-test"
SUBNET = "10.213.0"
IMAGE = DEFAULT_IMAGE  # the cluster gets it from the main engine (scripts/test-engines.sh)
# The first cluster of a machine also makes the engines' image template, installs the
# registry and pushes the image into it (about a minute each).
START_TIMEOUT = 420
WORKER = 2  # the worker node the hardening is inspected on and that is killed
RUNSC_NODE = 3
SPREAD = 6  # instances that must land on more than one node
REGISTRY = SUBNET + ".2:5000"  # the cluster's registry (test-cluster.sh --registry)
REGISTRY_IMAGE = "%s/%s" % (REGISTRY, IMAGE)


class Cluster:
    """The test cluster: engine sockets and node addresses by node number."""

    def __init__(self, name):
        self.name = name
        self.manager = "unix://%s/%s-1.sock" % (RUN_DIR, name)
        self.template = "unix://%s/%s-by-addr/{addr}.sock" % (RUN_DIR, name)

    @staticmethod
    def addr(node):
        return "%s.%d" % (SUBNET, 10 + node)

    def engine(self, node):
        return docker.DockerClient(base_url="unix://%s/%s-%d.sock" % (RUN_DIR, self.name, node),
                                   timeout=30)

    def script(self, *args, timeout=60):
        return subprocess.run(["bash", SCRIPT] + list(args), capture_output=True, text=True,
                              timeout=timeout)


def make_certs(folder, addresses):
    """A CA, a server certificate for ``addresses`` and a client one (openssl CLI):
    ``folder`` gets ca.pem, server-cert.pem, server-key.pem; ``folder/client`` the
    client's ca.pem, cert.pem, key.pem (what DOCKER_CERT_PATH names)."""
    client = os.path.join(folder, "client")
    os.makedirs(client)

    def openssl(*args):
        subprocess.run(("openssl",) + args, cwd=folder, check=True, capture_output=True)

    def signed(cert, key, subject, usage):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", key, "-out", "req.csr", "-subj", "/CN=" + subject)
        with open(os.path.join(folder, "ext.cnf"), "w") as ext:
            ext.write(usage + "\n")
        openssl("x509", "-req", "-in", "req.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-out", cert, "-extfile", "ext.cnf")

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=fiddledock test CA")
    signed("server-cert.pem", "server-key.pem", "node",
           "extendedKeyUsage=serverAuth\nsubjectAltName="
           + ",".join("IP:" + a for a in addresses))
    signed(os.path.join(client, "cert.pem"), os.path.join(client, "key.pem"), "notebook",
           "extendedKeyUsage=clientAuth")
    shutil.copy(os.path.join(folder, "ca.pem"), client)
    return client


@pytest.fixture(scope="module")
def cluster(default_image, tmp_path_factory):
    if os.geteuid() != 0:
        missing("a test cluster needs root (network namespaces, dockerd)")
    found = Cluster("sw%s" % uuid.uuid4().hex[:6])
    certs = str(tmp_path_factory.mktemp("tls"))
    found.client_certs = make_certs(certs, [Cluster.addr(n) for n in (1, 2, 3)])
    done = found.script("start", found.name, "3", "--runsc-node", str(RUNSC_NODE),
                        "--registry", "--tls", certs, timeout=START_TIMEOUT)
    if done.returncode != 0:
        found.script("stop", found.name)
        missing("could not start a Swarm test cluster: %s"
                % (done.stderr.strip().splitlines() or ["no output"])[-1])
    try:
        yield found
    finally:
        stopped = found.script("stop", found.name, timeout=120)
        assert stopped.returncode == 0, stopped.stderr


def swarm_kernel(cluster, scope):
    """A real kernel whose instances run on the cluster, set up as a notebook would be."""
    kernel = Kernel(scope, env={"DOCKER_HOST": cluster.manager})
    run_ok(kernel, '%%config DockerRun.backend = "swarm"\n'
                   '%%config DockerRun.node_engine = %r\n'
                   '%%config DockerRun.cpus = 0.25\n'
                   '%%config DockerRun.memory = "256m"' % cluster.template)
    return kernel


class Notebook:
    """The module's kernel; ``restart`` replaces it with a new one of the same notebook."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.scope = "pytest-swarm-%s" % uuid.uuid4().hex[:8]
        self.kernel = swarm_kernel(cluster, self.scope)

    def restart(self):
        self.kernel.shutdown()
        self.kernel = swarm_kernel(self.cluster, self.scope)

    def nodes(self):
        """Instance name -> the node it runs on, as `%dockerrun list` has it."""
        out = run_ok(self.kernel, "import json\nfrom fiddledock_magic._extension import "
                                  "manager_of\nprint(json.dumps({r.name: r.node for r in "
                                  "manager_of(get_ipython()).statuses()}))")
        return json.loads(out.strip().splitlines()[-1])

    def on_node(self, node):
        return sorted(n for n, where in self.nodes().items()
                      if "(%s)" % Cluster.addr(node) in where)


@pytest.fixture(scope="module")
def notebook(cluster):
    book = Notebook(cluster)
    try:
        yield book
    finally:
        book.kernel.execute("%dockerrun delete --all", timeout=120)
        book.kernel.shutdown()


def run_ok(kernel, code, timeout=120):
    """stdout (and displays' text) of a cell that must succeed."""
    reply, msgs = kernel.execute(code, timeout=timeout)
    assert reply["status"] == "ok", (code[:80], reply.get("ename"), reply.get("evalue"),
                                     stream_text(msgs, "stderr"))
    shown = [m["content"]["data"].get("text/plain", "") for _, m in msgs
             if m["msg_type"] == "display_data" and not is_notice(m)]
    return stream_text(msgs) + "".join(shown)


def shown_text(msgs):
    """Everything a cell showed: stdout, stderr, notices and its error."""
    errors = ["\n".join(m["content"]["traceback"]) for _, m in msgs if m["msg_type"] == "error"]
    return (stream_text(msgs) + stream_text(msgs, "stderr") + notice_text(msgs)
            + "\n".join(errors))


def container_on(cluster, node, instance):
    """The docker-py container of an instance on a node's engine."""
    found = cluster.engine(node).containers.list(
        filters={"label": "fiddledock.instance=%s" % instance})
    assert len(found) == 1, "instance %s is not on node %d" % (instance, node)
    return found[0]


def instance_ip(cluster, notebook, name):
    """The address an instance has on its own overlay network."""
    where = [n for n in (1, 2, 3) if "(%s)" % Cluster.addr(n) in notebook.nodes()[name]][0]
    networks = container_on(cluster, where, name).attrs["NetworkSettings"]["Networks"]
    return [net["IPAddress"] for net in networks.values() if net["IPAddress"]][0]


class Running:
    """A cell run on another thread, returned once it has printed ``text``; ``live``:
    its messages so far, ``result()``: (reply, messages) once it has ended."""

    def __init__(self, kernel, cell, text, what, timeout=120):
        self.live, self._done = [], []
        self._thread = threading.Thread(target=lambda: self._done.append(
            kernel.execute(cell, collect=self.live, timeout=timeout)))
        self._thread.start()
        wait_for(printed(self.live, text), what)

    def result(self, wait=90):
        self._thread.join(wait)
        assert self._done, "the cell did not end within %d s" % wait
        return self._done[0]
