"""FiddleDock on a Docker Swarm cluster, next to one engine: the cluster's figures.

    .venv/bin/python bench/cluster.py            # ~4 min; table + bench/results/cluster.json
    .venv/bin/python bench/cluster.py --quick    # fewer repetitions and instances

Starts a 3-node test cluster of its own (scripts/test-cluster.sh, root), runs
the magic in process on a real IPython shell (``DockerRun.backend = "swarm"``,
DOCKER_HOST the manager) and, as the baseline, the same magic with the Docker
backend on one node's engine (the same dockerd, without Swarm), or `docker run
--rm` on that node. Measurements and baselines are interleaved in rounds. The
cluster is stopped at the end, also on Ctrl-C.
"""

import argparse
import collections
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import docker

from fiddledock_magic._image import DEFAULT_IMAGE

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "scripts", "test-cluster.sh")
RUN_DIR = "/run/fiddledock-test"
IMAGE = DEFAULT_IMAGE
NODE = 2  # the worker whose engine is the one-engine baseline


def log(text):
    sys.__stderr__.write("[cluster bench] %s\n" % text)
    sys.__stderr__.flush()


def p50_ms(values):
    return round(statistics.median(values) * 1e3, 1)


class Bench:
    def __init__(self, name, shell):
        self.name = name
        self.shell = shell
        self.manager = "unix://%s/%s-1.sock" % (RUN_DIR, name)
        self.node = "unix://%s/%s-%d.sock" % (RUN_DIR, name, NODE)

    def use(self, backend):
        """Switch the magic to the cluster ("swarm") or to one node's engine ("docker")."""
        os.environ["DOCKER_HOST"] = self.manager if backend == "swarm" else self.node
        self.line("config", "DockerRun.backend = %r" % backend)

    def line(self, magic, text):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return self.shell.run_line_magic(magic, text)

    def cell(self, name, code):
        """Seconds one %%dockerrun cell took, its output kept out of the way."""
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.shell.run_cell_magic("dockerrun", name, code)
        return time.perf_counter() - started

    def first_cells(self, rounds):
        cluster, docker_run = [], []
        for i in range(rounds):
            self.use("swarm")
            cluster.append(self.cell("first%d" % i, "print(1)"))
            self.line("dockerrun", "delete first%d" % i)
            started = time.perf_counter()
            subprocess.run(["docker", "-H", self.node, "run", "--rm", "--network", "none", IMAGE,
                            "python3", "-c", "print(1)"], check=True, capture_output=True)
            docker_run.append(time.perf_counter() - started)
        return {"first cell on the cluster, create to output (ms)": p50_ms(cluster),
                "docker run --rm on one node (baseline, ms)": p50_ms(docker_run),
                "first cell ratio (cluster / docker run)":
                    round(statistics.median(cluster) / statistics.median(docker_run), 2)}

    def first_cells_pooled(self, rounds):
        """The first cell of an instance taken from a pool of one (refilled in between)."""
        from fiddledock_magic._extension import manager_of
        self.use("swarm")
        pool = manager_of(self.shell).pool
        pool.resize(1)
        times = []
        for i in range(rounds):
            pool.wait(180)
            times.append(self.cell("pooled%d" % i, "print(1)"))
            self.line("dockerrun", "delete pooled%d" % i)
        pool.resize(0)
        return {"first cell on the cluster from a pool of 1 (ms)": p50_ms(times)}

    def network_cost(self, rounds):
        """Where a first cell's time goes: a service like an instance's (the same image
        and tmpfs volumes), created until its task runs, with the internal overlay
        network of its own an instance gets, and with no network (which would give
        the task a bridge with a way out: not an option, only the comparison)."""
        client = docker.DockerClient(base_url=self.manager, timeout=60)
        image = client.images.get(IMAGE).id
        times = {True: [], False: []}
        for _ in range(rounds):
            for with_network in (True, False):
                times[with_network].append(_time_to_running(client, image, with_network))
        return {"a task running, with its own internal overlay network (ms)": p50_ms(times[True]),
                "a task running, no network (comparison, ms)": p50_ms(times[False])}

    def warm_cells(self, rounds, per_round):
        times = {"swarm": [], "docker": []}
        for _ in range(rounds):
            for backend in ("swarm", "docker"):
                self.use(backend)
                self.cell("warm", "x = 1")  # (re)attach after the switch: not a warm cell
                times[backend] += [self.cell("warm", "x = 1") for _ in range(per_round)]
        for backend in ("swarm", "docker"):
            self.use(backend)
            self.line("dockerrun", "delete warm")
        return {"warm cell through a node engine (swarm, ms)": p50_ms(times["swarm"]),
                "warm cell, Docker backend on that engine (baseline, ms)": p50_ms(times["docker"]),
                "warm cell ratio (swarm / one engine)":
                    round(statistics.median(times["swarm"])
                          / statistics.median(times["docker"]), 2)}

    def many(self, count):
        from fiddledock_magic._extension import manager_of
        result = {}
        for backend in ("swarm", "docker"):
            self.use(backend)
            started = time.perf_counter()
            for i in range(count):
                self.line("dockerrun", "create c%d" % i)
            created = time.perf_counter() - started
            started = time.perf_counter()
            for i in range(count):
                self.cell("c%d" % i, "x = %d" % i)
            cells = time.perf_counter() - started
            if backend == "swarm":
                rows = manager_of(self.shell).statuses()
                result["placement (instances per node)"] = dict(
                    collections.Counter(r.node for r in rows if r.name.startswith("c")))
            label = "cluster, 3 nodes" if backend == "swarm" else "one node's engine (baseline)"
            result["%d instances created one after another, %s (s)" % (count, label)] = \
                round(created, 1)
            result["a cell in each of them (booted at create), %s (s)" % label] = round(cells, 1)
            self.line("dockerrun", "delete --all")
        return result


def _time_to_running(client, image, with_network):
    name = "bench-net-%s" % uuid.uuid4().hex[:6]
    started = time.perf_counter()
    networks = []
    if with_network:
        network = client.api.create_network(name, driver="overlay", internal=True)
        networks = [{"Target": network["Id"]}]
    folders = [{"Type": "volume", "Target": target, "VolumeOptions": {"DriverConfig": {
        "Name": "local", "Options": {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}}}}
        for target in ("/tmp", "/home/sandbox", "/run/fiddledock", "/dev/shm")]
    service = client.api.create_service(
        {"ContainerSpec": {"Image": image, "Command": ["sleep", "60"], "Mounts": folders},
         "RestartPolicy": {"Condition": "none"}, "Networks": networks}, name=name)
    while not [t for t in client.api.tasks(filters={"service": service["ID"]})
               if t["Status"]["State"] == "running"]:
        time.sleep(0.02)
    took = time.perf_counter() - started
    client.api.remove_service(service["ID"])
    if with_network:
        for _ in range(50):  # the network is in use until the task has stopped
            try:
                client.api.remove_network(network["Id"])
                break
            except docker.errors.APIError:
                time.sleep(0.2)
    return took


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and instances")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "cluster.json"))
    args = parser.parse_args(argv)
    name = "bc%s" % uuid.uuid4().hex[:6]
    started = subprocess.run(["bash", SCRIPT, "start", name, "3"], capture_output=True, text=True)
    if started.returncode != 0:
        sys.exit("cannot start a test cluster: %s" % started.stderr.strip())
    log(started.stdout.strip().splitlines()[0])
    try:
        from IPython.testing.globalipapp import start_ipython
        shell = start_ipython()
        shell.run_line_magic("load_ext", "fiddledock_magic")
        bench = Bench(name, shell)
        for setting in ("DockerRun.scope = 'bench-cluster-%s'" % name,
                        "DockerRun.node_engine = 'unix://%s/%s-by-addr/{addr}.sock'"
                        % (RUN_DIR, name),
                        "DockerRun.cpus = 0.1", "DockerRun.memory = '128m'"):
            bench.line("config", setting)
        result = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        log("first cells")
        result.update(bench.first_cells(3 if args.quick else 6))
        log("first cells from a pool")
        result.update(bench.first_cells_pooled(3 if args.quick else 6))
        log("what the instance's own network costs")
        result.update(bench.network_cost(3 if args.quick else 6))
        log("warm cells")
        result.update(bench.warm_cells(2 if args.quick else 3, 10 if args.quick else 30))
        log("many instances")
        result.update(bench.many(9 if args.quick else 30))
    finally:
        subprocess.run(["bash", SCRIPT, "stop", name], capture_output=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as out:
        json.dump(result, out, indent=1)
    width = max(len(key) for key in result)
    for key, value in result.items():
        print("%-*s  %s" % (width, key, value))


if __name__ == "__main__":
    main()
