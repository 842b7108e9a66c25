"""Instances on a Docker Swarm cluster (``DockerRun.backend = "swarm"``), end to end.

One test cluster for the module (tests/swarm_cluster.py: three engines on
this machine, each in a network namespace of its own, a manager, a worker
and a gVisor worker, and a registry on their bridge) and a real kernel
pointed at its manager. The tests run in file order: the image copies need
nodes without containers, and the node killed last takes its instances with
it.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from traitlets import TraitError

from conftest import Kernel, new_scope, notice_text, stream_text, wait_for
from fiddledock_magic._config import DockerRun
from swarm_cluster import (IMAGE, REGISTRY, REGISTRY_IMAGE, RUNSC_NODE, SPREAD, SUBNET,
                           WORKER, Cluster, Running, cluster, container_on, instance_ip,
                           notebook, run_ok, shown_text, swarm_kernel)  # noqa: F401 (fixtures)


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
    cell = Running(notebook.kernel, "%%dockerrun first\nimport time\nfor i in range(3):\n"
                   "    print('line', i, flush=True)\n    time.sleep(0.4)",
                   "line 0", "the first line, while the cell runs")
    assert "line 2" not in stream_text(list(cell.live))  # streamed, not handed over at the end
    reply, msgs = cell.result()
    assert reply["status"] == "ok"
    assert stream_text(msgs) == "line 0\nline 1\nline 2\n"


def image_ids(cluster, node):
    return {image.id for image in cluster.engine(node).images.list()}


def test_with_a_registry_the_node_pulls_the_image(cluster, notebook):
    gvisor = cluster.engine(RUNSC_NODE)  # no instance there yet
    image_id = cluster.engine(1).images.get(IMAGE).id
    gvisor.images.remove(IMAGE)
    assert image_id not in image_ids(cluster, RUNSC_NODE)
    reply, msgs = notebook.kernel.execute(
        "%%dockerrun create reg --runtime runsc --image %s" % REGISTRY_IMAGE, timeout=180)
    text = shown_text(msgs)
    assert reply["status"] == "ok", text
    assert "is getting the image %s from the registry %s" % (REGISTRY_IMAGE, REGISTRY) in text
    assert "copying" not in text  # the node pulled it; FiddleDock copied nothing
    assert run_ok(notebook.kernel, "%%dockerrun reg\nprint('from the registry')") \
        == "from the registry\n"
    pulled = gvisor.images.get(image_id)
    assert [d for d in pulled.attrs["RepoDigests"] if d.startswith(REGISTRY + "/")], pulled.attrs
    run_ok(notebook.kernel, "%dockerrun delete reg")
    # An image the registry does not have: said before anything is made.
    reply, msgs = notebook.kernel.execute("%%dockerrun create nope --image %s/absent:1" % REGISTRY)
    text = shown_text(msgs)
    assert reply["status"] == "error" and "Traceback" not in text, text
    assert "the registry %s does not give the image %s/absent:1" % (REGISTRY, REGISTRY) in text
    assert "nope" not in notebook.nodes()


def test_a_node_that_lost_the_image_gets_it_when_a_task_needs_it(cluster, notebook):
    """The copy made when a task fails for want of the image: the pool's instances
    (made with no copy first) and a node whose image went since FiddleDock looked."""
    gvisor = cluster.engine(RUNSC_NODE)
    image_id = cluster.engine(1).images.get(IMAGE).id
    gvisor.images.remove(image_id, force=True)  # what the registry test left there
    run_ok(notebook.kernel, '%config DockerRun.runtime = "runsc"')  # placed on that node
    try:
        assert run_ok(notebook.kernel, "from fiddledock_magic._extension import manager_of\n"
                                       "pool = manager_of(get_ipython()).pool\n"
                                       "pool.resize(1)\nprint(pool.wait(180))",
                      timeout=240).strip() == "True"
        assert image_id in image_ids(cluster, RUNSC_NODE)
        assert run_ok(notebook.kernel, "%%dockerrun pooledg\nimport socket\n"
                                       "print(socket.gethostname())").strip() == "sandbox"
    finally:
        run_ok(notebook.kernel, '%dockerrun pool 0\n%config DockerRun.runtime = "runc"')
    run_ok(notebook.kernel, "%dockerrun delete pooledg")
    gvisor.images.remove(image_id, force=True)  # gone behind FiddleDock's back
    reply, msgs = notebook.kernel.execute("%dockerrun create lazy --runtime runsc", timeout=240)
    text = shown_text(msgs)
    assert reply["status"] == "ok", text
    assert "lacks the image %s: copying it from the manager's engine" % IMAGE in text, text
    assert "image %s copied" % IMAGE in text
    assert run_ok(notebook.kernel, "%%dockerrun lazy\nprint('ran')") == "ran\n"
    assert image_id in image_ids(cluster, RUNSC_NODE)
    run_ok(notebook.kernel, "%dockerrun delete lazy")


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


def test_the_panel_has_a_node_column_on_a_cluster(notebook):
    shown = run_ok(notebook.kernel, "import html, json, re\np = %dockerrun panel\np.model.refresh()\n"
                   "text = lambda w: html.unescape(re.sub(r'<[^>]+>', '', w.value))\n"
                   "print(json.dumps([[text(c) for c in p.head.children[1:]],\n"
                   "                  [text(c) for c in p.rows['s0'].cells],\n"
                   "                  p.grid.layout.grid_template_columns.count('minmax')]))")
    headings, cells, tracks = json.loads(shown.strip().splitlines()[-1])
    assert headings[:4] == ["name", "image", "status", "node"], headings
    assert cells[0] == "s0" and cells[3] == notebook.nodes()["s0"], cells
    assert tracks == len(headings) - 1  # the grid has the column too (the menu's is auto)


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


def on_worker(notebook):
    """An instance of the spread test that runs on the worker node."""
    names = [n for n in notebook.on_node(WORKER) if n.startswith("s")]
    assert names, notebook.nodes()
    return names[0]


def test_interrupt_reaches_a_cell_on_a_worker(notebook):
    name = on_worker(notebook)
    cell = Running(notebook.kernel, "%%dockerrun " + name + "\nimport time\n"
                   "print('looping', flush=True)\nwhile True:\n    time.sleep(0.01)",
                   "looping", "the cell to start on the worker")
    notebook.kernel.km.interrupt_kernel()
    reply, msgs = cell.result(30)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", shown_text(msgs)
    assert run_ok(notebook.kernel, "%%dockerrun " + name + "\nprint(me)") == name + "\n"


def test_put_and_get_through_a_node_engine(notebook, tmp_path):
    name = on_worker(notebook)
    data = os.urandom(200_000)
    (tmp_path / "in.bin").write_bytes(data)
    out = run_ok(notebook.kernel, "%%dockerrun put %s %s:/home/sandbox/in.bin"
                 % (tmp_path / "in.bin", name))
    assert "copied" in out, out
    seen = run_ok(notebook.kernel, "%%dockerrun " + name + "\nimport hashlib\n"
                  "print(hashlib.sha256(open('in.bin', 'rb').read()).hexdigest())")
    assert seen.strip() == hashlib.sha256(data).hexdigest()
    run_ok(notebook.kernel, "%%dockerrun get %s:in.bin %s" % (name, tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data


def test_a_second_kernel_sees_the_instance_busy(cluster, notebook):
    name = on_worker(notebook)
    other = swarm_kernel(cluster, notebook.scope)
    try:
        cell = Running(notebook.kernel, "%%dockerrun " + name + "\nimport time\n"
                       "print('a start', flush=True)\ntime.sleep(5)\nprint('a end')",
                       "a start", "the first kernel's cell to start")
        reply, msgs = other.execute("%%dockerrun " + name + "\nprint('b ran')")
        text = shown_text(msgs)
        assert reply["status"] == "error" and reply["ename"] == "InstanceBusy", text
        assert "instance %r is busy: the kernel with pid %d" % (name, notebook.kernel.pid) \
            in text, text
        assert "b ran" not in text
        row = [r for r in run_ok(other, "%dockerrun list").splitlines() if r.startswith(name)]
        assert " busy " in row[0], row
        reply, msgs = cell.result(30)
        assert reply["status"] == "ok" and stream_text(msgs) == "a start\na end\n"
        assert run_ok(other, "%%dockerrun " + name + "\nprint(me)") == name + "\n"
    finally:
        other.shutdown()


def test_an_idle_instance_stops_itself_on_its_node(cluster, notebook):
    run_ok(notebook.kernel, "%config DockerRun.idle_timeout = 3")
    try:
        run_ok(notebook.kernel, "%%dockerrun sleepy\nx = 1")
    finally:
        run_ok(notebook.kernel, "%config DockerRun.idle_timeout = 3600")

    def stopped():
        rows = run_ok(notebook.kernel, "%dockerrun list").splitlines()
        return " stopped " in [r for r in rows if r.startswith("sleepy")][0]
    wait_for(stopped, "the idle instance to stop itself", 30)
    reply, msgs = notebook.kernel.execute("%%dockerrun sleepy\nprint('x' in globals())",
                                          timeout=120)
    assert reply["status"] == "ok", shown_text(msgs)
    assert stream_text(msgs) == "False\n"
    assert "previous state is lost" in notice_text(msgs)
    run_ok(notebook.kernel, "%dockerrun delete sleepy")


TLS_NOTEBOOK = r"""
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
for cell in ("%load_ext fiddledock_magic", '%config DockerRun.backend = "swarm"',
             '%config DockerRun.node_engine = "tcp://{addr}:2376"',
             '%config DockerRun.cpus = 0.25', '%config DockerRun.memory = "256m"',
             "%%dockerrun overtls\nprint('ran over TLS')", "%dockerrun list",
             "%dockerrun delete overtls"):
    shell.run_cell(cell)
"""


def test_node_engines_over_tls_from_the_environment(cluster, tmp_path):
    # Run where the nodes' addresses are reachable: in the manager's namespace;
    # the manager too is asked over TLS, at its own address.
    env = dict(os.environ, DOCKER_HOST="tcp://%s.11:2376" % SUBNET, DOCKER_TLS_VERIFY="1",
               DOCKER_CERT_PATH=cluster.client_certs, JPY_SESSION_NAME=str(tmp_path))
    done = subprocess.run(["nsenter", "--net=/var/run/netns/%s-1" % cluster.name,
                           sys.executable, "-c", TLS_NOTEBOOK], env=env, capture_output=True,
                          text=True, timeout=180)
    shown = done.stdout + done.stderr
    assert "ran over TLS" in done.stdout and "Traceback" not in shown, shown[-2000:]
    row = [r for r in done.stdout.splitlines() if r.startswith("overtls")]
    assert row and "(%s." % SUBNET in row[0], done.stdout
    # Without the client's certificate (TLS not set up): one line naming the node engine.
    del env["DOCKER_TLS_VERIFY"], env["DOCKER_CERT_PATH"]
    env["DOCKER_HOST"] = cluster.manager
    done = subprocess.run(["nsenter", "--net=/var/run/netns/%s-1" % cluster.name,
                           sys.executable, "-c", TLS_NOTEBOOK], env=env, capture_output=True,
                          text=True, timeout=180)
    shown = done.stdout + done.stderr
    assert "ran over TLS" not in shown and "Traceback" not in shown, shown[-2000:]
    assert "the node engine tcp://%s." % SUBNET in shown, shown[-2000:]
    assert "wants TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH" in shown, shown[-2000:]


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
    cell = Running(notebook.kernel, "%%dockerrun " + victim + "\nimport time\n"
                   "print('working', flush=True)\ntime.sleep(60)",
                   "working", "the cell to start on the worker")
    killed = cluster.script("kill-node", cluster.name, str(WORKER))
    assert killed.returncode == 0, killed.stderr
    reply, msgs = cell.result(90)
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
