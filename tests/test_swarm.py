"""Instances on a Docker Swarm cluster (``DockerRun.backend = "swarm"``), end to end.

One test cluster for the module (scripts/test-cluster.sh: three engines on
this machine, each in a network namespace of its own; node 1 the manager,
node 3 runs gVisor and carries the node label fiddledock.runtime=runsc) and
a real kernel pointed at its manager. The tests run in file order: the image
copy needs a node without containers, and the node killed last takes its
instances with it.
"""

import json
import os
import subprocess
import threading
import uuid

import docker
import pytest
from traitlets import TraitError

from conftest import (Kernel, is_notice, missing, new_scope, notice_text, printed, stream_text,
                      wait_for)
from fiddledock_magic._config import DockerRun
from fiddledock_magic._image import DEFAULT_IMAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "test-cluster.sh")
RUN_DIR = "/run/fiddledock-test"
SUBNET = "10.213.0"
IMAGE = DEFAULT_IMAGE  # the cluster gets it from the main engine (scripts/test-engines.sh)
START_TIMEOUT = 240  # the first cluster of a machine also makes the engines' image template
WORKER = 2  # the worker node the hardening is inspected on and that is killed
RUNSC_NODE = 3
SPREAD = 6  # instances that must land on more than one node


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


@pytest.fixture(scope="module")
def cluster(default_image):
    if os.geteuid() != 0:
        missing("a test cluster needs root (network namespaces, dockerd)")
    found = Cluster("sw%s" % uuid.uuid4().hex[:6])
    done = found.script("start", found.name, "3", "--runsc-node", str(RUNSC_NODE),
                        timeout=START_TIMEOUT)
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


def test_node_lacking_the_image_gets_it_from_the_manager(cluster, notebook):
    cluster.engine(WORKER).images.remove(IMAGE)  # a fresh cluster: nothing uses it yet
    reply, msgs = notebook.kernel.execute("%%dockerrun first\nprint('ran')", timeout=180)
    assert reply["status"] == "ok", shown_text(msgs)
    text = shown_text(msgs)
    assert "lacks the image %s: copying it from the manager's engine" % IMAGE in text
    assert "image %s copied" % IMAGE in text
    assert "ran" in stream_text(msgs)
    assert cluster.engine(WORKER).images.get(IMAGE).id == cluster.engine(1).images.get(IMAGE).id


def test_cell_streams_through_a_node_engine(notebook):
    live = []
    done = []
    cell = ("%%dockerrun first\nimport time\nfor i in range(3):\n"
            "    print('line', i, flush=True)\n    time.sleep(0.4)")
    thread = threading.Thread(target=lambda: done.append(
        notebook.kernel.execute(cell, collect=live)))
    thread.start()
    wait_for(printed(live, "line 0"), "the first line, while the cell runs")
    assert "line 2" not in stream_text(list(live))  # streamed, not handed over at the end
    thread.join(60)
    reply, msgs = done[0]
    assert reply["status"] == "ok"
    assert stream_text(msgs) == "line 0\nline 1\nline 2\n"


def test_instances_spread_over_nodes_and_list_shows_them(cluster, notebook):
    for i in range(SPREAD):
        run_ok(notebook.kernel, "%%%%dockerrun s%d\nme = 's%d'" % (i, i))
    nodes = notebook.nodes()
    spread = {nodes["s%d" % i] for i in range(SPREAD)}
    assert len(spread) >= 2, nodes
    # runc instances keep off the gVisor node
    assert not any("(%s)" % Cluster.addr(RUNSC_NODE) in where for where in spread), nodes
    listed = run_ok(notebook.kernel, "%dockerrun list")
    assert "node" in listed.splitlines()[0]
    assert nodes["s0"] in listed


def test_hardening_holds_on_a_worker(cluster, notebook):
    names = notebook.on_node(WORKER)
    assert names, "no instance landed on the worker node %d" % WORKER
    info = container_on(cluster, WORKER, names[0]).attrs
    host = info["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == ["CAP_KILL", "CAP_SETGID", "CAP_SETUID"]
    assert host["ReadonlyRootfs"] is True
    assert info["Config"]["User"] == "0:0"
    assert host["PidsLimit"] == 256
    assert host["Memory"] == 256 << 20
    assert host["NanoCpus"] == 250000000
    assert host["LogConfig"]["Type"] == "none"
    assert host["Init"] is True
    inside = run_ok(notebook.kernel, "%%dockerrun " + names[0] + "\n"
                    "import os\n"
                    "mounts = {l.split()[1]: l.split()[3] for l in open('/proc/mounts')}\n"
                    "routes = [l.split()[1] for l in open('/proc/net/route').readlines()[1:]]\n"
                    "caps = [l for l in open('/proc/self/status') if l.startswith('CapEff')]\n"
                    "print(os.getuid(), os.stat('/home/sandbox').st_uid, caps[0].split()[1])\n"
                    "print('nr_inodes' in mounts['/tmp'], 'nr_inodes' in mounts['/home/sandbox'])\n"
                    "print('default route' if '00000000' in routes else 'no default route')\n"
                    "try:\n    open('/etc/x', 'w')\nexcept OSError as e:\n    print(e.strerror)")
    assert inside.splitlines() == ["1000 1000 0000000000000000", "True True",
                                   "no default route", "Read-only file system"]


def instance_ip(cluster, notebook, name):
    """The address an instance has on its own overlay network."""
    where = [n for n in (1, 2, 3) if "(%s)" % Cluster.addr(n) in notebook.nodes()[name]][0]
    networks = container_on(cluster, where, name).attrs["NetworkSettings"]["Networks"]
    return [net["IPAddress"] for net in networks.values() if net["IPAddress"]][0]


def test_writable_folders_are_bounded_in_files_too(notebook):
    run_ok(notebook.kernel, "%dockerrun create files --disk 16m")  # 4096 files per folder
    reply, msgs = notebook.kernel.execute(
        "%%dockerrun files\nimport errno\nn = 0\ntry:\n    while True:\n"
        "        open('/home/sandbox/f%d' % n, 'w').close()\n        n += 1\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno], n)", timeout=120)
    assert reply["status"] == "ok", shown_text(msgs)
    code, made = stream_text(msgs).split()
    assert code == "ENOSPC" and 4000 <= int(made) <= 4096
    assert "/home/sandbox has too many files" in notice_text(msgs)
    run_ok(notebook.kernel, "%dockerrun delete files")


PROBE = r"""
import json, socket
results = {}
for host, port in %s:
    s = socket.socket()
    s.settimeout(1.5)
    try:
        s.connect((host, port))
        results['%%s:%%d' %% (host, port)] = 'connected'
    except OSError as e:
        results['%%s:%%d' %% (host, port)] = type(e).__name__ + ' ' + str(e.errno)
    finally:
        s.close()
for host, port in %s:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.sendto(b'x', (host, port))
        results['udp %%s:%%d' %% (host, port)] = 'sent'
    except OSError as e:
        results['udp %%s:%%d' %% (host, port)] = 'unreachable'
    u.close()
try:
    socket.getaddrinfo('example.com', 80)
    results['dns'] = 'resolved'
except OSError:
    results['dns'] = 'no answer'
print(json.dumps(results))
"""


def test_no_route_to_nodes_gateways_swarm_ports_or_other_instances(cluster, notebook):
    me, other = "s0", "s1"
    own_net = instance_ip(cluster, notebook, me).rsplit(".", 1)[0]
    other_ip = instance_ip(cluster, notebook, other)
    ports = (22, 80, 2375, 2376, 2377, 7946)
    targets = [(Cluster.addr(n), p) for n in (1, 2, 3) for p in ports]
    targets += [(SUBNET + ".1", 2375), ("172.17.0.1", 2375), ("172.17.0.1", 80),
                (own_net + ".1", 2377), (own_net + ".1", 2375), (own_net + ".2", 80),
                (other_ip, 80), ("8.8.8.8", 53), ("1.1.1.1", 443)]
    udp = [(Cluster.addr(n), p) for n in (1, 2, 3) for p in (4789, 7946)] + [("8.8.8.8", 53)]
    out = run_ok(notebook.kernel, "%%dockerrun " + me + "\n" + PROBE % (targets, udp),
                 timeout=180)
    results = json.loads(out.strip().splitlines()[-1])
    assert len(results) == len(targets) + len(udp) + 1
    reached = {t: r for t, r in results.items() if r in ("connected", "sent", "resolved")}
    assert reached == {}, results


def test_runsc_places_on_the_gvisor_node_and_says_when_there_is_none(cluster, notebook):
    run_ok(notebook.kernel, "%dockerrun create g --runtime runsc")
    assert run_ok(notebook.kernel, "%%dockerrun g\nimport os\nprint(os.uname().release)") \
        .strip() == "4.4.0"  # gVisor's kernel
    assert "(%s)" % Cluster.addr(RUNSC_NODE) in notebook.nodes()["g"]
    manager = cluster.engine(1)
    node = [n for n in manager.nodes.list() if n.attrs["Status"]["Addr"]
            == Cluster.addr(RUNSC_NODE)][0]
    spec = dict(node.attrs["Spec"])
    labels = dict(spec["Labels"])
    spec["Labels"] = {}
    node.update(spec)
    try:
        reply, msgs = notebook.kernel.execute("%dockerrun create h --runtime runsc")
        text = shown_text(msgs)
        assert "needs a Swarm node" in text and "fiddledock.runtime=runsc" in text, text
        assert "Traceback" not in text
    finally:
        node.reload()
        spec = dict(node.attrs["Spec"], Labels=labels)
        node.update(spec)
    assert "h" not in notebook.nodes()


def test_pooled_instance_keeps_its_state_once_taken(notebook):
    ready = run_ok(notebook.kernel, "from fiddledock_magic._extension import manager_of\n"
                                    "pool = manager_of(get_ipython()).pool\npool.resize(1)\n"
                                    "print(pool.wait(120))", timeout=180)
    assert ready.strip() == "True"
    try:
        # the pool's hostname says the container was made before its name was known
        assert run_ok(notebook.kernel, "%%dockerrun pooled\nimport socket\nkept = 7\n"
                                       "print(socket.gethostname())").strip() == "sandbox"
        # taking it relabels its service; that must not replace its task
        assert run_ok(notebook.kernel, "%%dockerrun pooled\nprint(kept)").strip() == "7"
    finally:
        run_ok(notebook.kernel, "%dockerrun pool 0")


def test_no_node_with_room_is_a_clear_error_and_leaves_nothing(cluster, notebook):
    # 13g reserved: one such instance per node, and two nodes run runc instances
    for name in ("big1", "big2"):
        run_ok(notebook.kernel, "%%dockerrun create %s --memory 13g" % name)
    reply, msgs = notebook.kernel.execute("%dockerrun create big3 --memory 13g", timeout=120)
    text = shown_text(msgs)
    assert "Swarm cannot place the instance" in text and "insufficient resources" in text, text
    assert "Traceback" not in text
    run_ok(notebook.kernel, "%dockerrun delete big1\n%dockerrun delete big2")
    manager = cluster.engine(1)
    assert "big3" not in notebook.nodes()
    # deleted: no service, no network, no container, no volume left (one big per node)
    for name in ("big1", "big2", "big3"):
        assert manager.services.list(filters={"label": "fiddledock.instance=%s" % name}) == []
    assert not [n for n in manager.networks.list() if "-big" in n.name]
    for node in (1, WORKER):
        engine = cluster.engine(node)
        assert engine.containers.list(all=True, filters={"label": "fiddledock.instance=big1"}) \
            + engine.containers.list(all=True, filters={"label": "fiddledock.instance=big2"}) == []
        assert engine.volumes.list(filters={"dangling": True, "label": "fiddledock.volume=1"}) \
            == [], "node %d keeps unused volumes" % node


def test_a_network_is_refused_on_the_cluster_and_nothing_is_made(cluster, notebook):
    # A non-internal overlay network would reach the nodes' Swarm ports (measured).
    reply, msgs = notebook.kernel.execute("%dockerrun create netted --network bridge",
                                          timeout=120)
    text = shown_text(msgs)
    assert reply["status"] == "error" and "Traceback" not in text, text
    assert "instances on a Swarm cluster have no network" in text, text
    manager = cluster.engine(1)
    assert manager.services.list(filters={"label": "fiddledock.instance=netted"}) == []
    assert not [n for n in manager.networks.list() if "netted" in n.name]
    assert "netted" not in notebook.nodes()


def test_reattach_after_a_kernel_restart(notebook):
    run_ok(notebook.kernel, "%%dockerrun kept\nvalue = 'still here'")
    notebook.restart()
    reply, msgs = notebook.kernel.execute("%%dockerrun kept\nprint(value)")
    assert reply["status"] == "ok", shown_text(msgs)
    assert stream_text(msgs) == "still here\n"
    assert "created" not in stream_text(msgs, "stderr")


def test_a_node_that_dies(cluster, notebook):
    doomed = notebook.on_node(WORKER)
    survivors = [n for n in notebook.on_node(1) if n.startswith("s")]
    assert doomed and survivors, notebook.nodes()
    victim = doomed[0]
    live, done = [], []
    cell = "%%dockerrun " + victim + "\nimport time\nprint('working', flush=True)\ntime.sleep(60)"
    thread = threading.Thread(target=lambda: done.append(
        notebook.kernel.execute(cell, collect=live, timeout=120)))
    thread.start()
    wait_for(printed(live, "working"), "the cell to start on the worker")
    killed = cluster.script("kill-node", cluster.name, str(WORKER))
    assert killed.returncode == 0, killed.stderr
    thread.join(90)
    reply, msgs = done[0]
    assert reply["status"] == "error"
    text = shown_text(msgs)
    assert "instance %r: the node running it, " % victim in text and "is gone" in text, text
    assert "Traceback" not in text
    # the next cell: a fresh instance on a healthy node, with the usual notice
    reply, msgs = notebook.kernel.execute("%%dockerrun " + victim + "\nprint('me' in dir())",
                                          timeout=120)
    assert reply["status"] == "ok", shown_text(msgs)
    assert stream_text(msgs) == "False\n"
    assert "its previous state is lost" in notice_text(msgs)
    assert "(%s)" % Cluster.addr(WORKER) not in notebook.nodes()[victim]
    for name in survivors:  # the other nodes' instances are untouched
        reply, msgs = notebook.kernel.execute("%%dockerrun " + name + "\nprint(me)")
        assert reply["status"] == "ok" and stream_text(msgs) == name + "\n", shown_text(msgs)
        assert stream_text(msgs, "stderr") == ""


@pytest.mark.parametrize("setting, value, says", [
    ("backend", "kubernetes", "'kubernetes'"),
    ("node_engine", "tcp://{address}:2376", "only {addr}, {hostname} and {id}"),
    ("node_engine", "{addr}:2376", "must start with tcp://, ssh:// or unix://"),
])
def test_bad_cluster_settings_are_refused_at_once(setting, value, says):
    config = DockerRun()
    with pytest.raises(TraitError) as refused:
        setattr(config, setting, value)
    assert says in str(refused.value)


def test_swarm_backend_on_an_engine_that_is_no_manager_says_so(docker_client):
    kernel = Kernel(new_scope())  # the main engine: not in a swarm
    try:
        run_ok(kernel, '%config DockerRun.backend = "swarm"')
        reply, msgs = kernel.execute("%%dockerrun nomanager\nprint(1)")
        text = shown_text(msgs)
        assert reply["status"] == "error"
        assert "not a swarm manager" in text and "Traceback" not in text, text
    finally:
        kernel.shutdown()
