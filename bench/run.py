"""FiddleDock's benchmark: the product against what a user would otherwise use, in one run.

    .venv/bin/python bench/run.py            # full run (~2-4 min), table + bench/results/latest.json
    .venv/bin/python bench/run.py --quick    # fewer repetitions, for a smoke check
    .venv/bin/python bench/run.py --profile  # also profile the warm cell (pyinstrument)

Every figure is taken next to its baseline in the same run, and the speed
targets (the README's "How fast": warm cell, first cell, pool, streaming) are
judged on ratios: absolute times on a shared machine are noisy. Measurements of the product and of its baseline are interleaved in
rounds so that a burst of load elsewhere hits both.

How the magic is measured (see bench/README.md for the reasoning): in process,
``shell.run_cell_magic('dockerrun', ...)`` on a real IPython shell with the
extension loaded, with sys.stdout/sys.stderr swapped for an in-memory sink
while the cell runs, so a terminal's speed is not measured. The same cells are
also run through a real ipykernel (execute request to reply, iopub drained),
which is what a notebook sees end to end.

Every container this creates carries this run's scope (or bench label) and is
removed at the end, also on Ctrl-C.
"""

import argparse
import atexit
import concurrent.futures
import datetime
import io
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MIB = 1 << 20
OUT = sys.__stdout__


def log(text):
    sys.__stderr__.write("[bench] %s\n" % text)
    sys.__stderr__.flush()


# --- statistics ----------------------------------------------------------------
def pct(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100.0 * len(s)) - 1)]


def summary(seconds):
    """p50/p95/min/max in milliseconds."""
    return {
        "n": len(seconds),
        "p50_ms": round(pct(seconds, 50) * 1e3, 3),
        "p95_ms": round(pct(seconds, 95) * 1e3, 3),
        "min_ms": round(min(seconds) * 1e3, 3),
        "max_ms": round(max(seconds) * 1e3, 3),
    }


# --- capturing what a cell prints ------------------------------------------------
class Sink(io.TextIOBase):
    """Stands in for sys.stdout while a cell runs: keeps the text (or only counts it)."""

    def __init__(self, keep=True):
        super().__init__()
        self.keep = keep
        self.parts = []
        self.chars = 0

    def writable(self):
        return True

    def write(self, text):
        self.chars += len(text)
        if self.keep:
            self.parts.append(text)
        return len(text)

    def flush(self):
        pass

    def text(self):
        return "".join(self.parts)


class BenchError(Exception):
    """A measurement could not be taken (wrong output, failed command)."""


# --- the real kernel ------------------------------------------------------------
class Kernel:
    """A local ipykernel driven by jupyter_client, with blocking (not polling) waits."""

    def __init__(self, env):
        from jupyter_client.manager import start_new_kernel
        kenv = dict(os.environ)
        kenv.update(env)
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=kenv, startup_timeout=60)

    def execute(self, code, timeout=120, on_iopub=None):
        """Run code; returns (seconds from request to reply with iopub idle, stdout text)."""
        kc = self.kc
        t0 = time.perf_counter()
        msg_id = kc.execute(code, store_history=False)
        reply = None
        idle = False
        out = []
        error = None
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("kernel did not finish %r" % code[:60])
            if not idle:
                msg = kc.get_iopub_msg(timeout=left)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                if on_iopub is not None:
                    on_iopub(time.time(), msg)
                if kind == "stream" and msg["content"]["name"] == "stdout":
                    out.append(msg["content"]["text"])
                elif kind == "error":
                    error = msg["content"]
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
            else:
                msg = kc.get_shell_msg(timeout=left)
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg["content"]
        elapsed = time.perf_counter() - t0
        if reply.get("status") != "ok":
            raise BenchError("kernel cell failed: %s" % (error or reply))
        return elapsed, "".join(out)

    def shutdown(self):
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)
        except Exception as exc:  # cleanup must go on
            log("kernel shutdown: %s" % exc)


# --- the benchmark ------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.scope = "bench-%s" % self.run_id
        self.metrics = {}
        self.targets = []
        self.notes = []
        self.kernel = None
        self.shell = None
        self._cleaned = False
        import docker
        self.docker = docker.from_env(timeout=300)
        from fiddledock_magic import _image
        self.image = _image.DEFAULT_IMAGE
        runtimes = self.docker.info().get("Runtimes") or {}
        self.has_runsc = "runsc" in runtimes and not args.no_gvisor

    # --- setup / teardown --------------------------------------------------------
    def start_shell(self):
        from IPython.testing.globalipapp import start_ipython
        self.shell = start_ipython()
        self.shell.run_line_magic("load_ext", "fiddledock_magic")
        self.config("scope", self.scope)
        self.config("pool_size", 0)  # a "new instance" must really be new until the pool section
        from fiddledock_magic._extension import manager_of
        self.manager = manager_of(self.shell)
        self.backend = self.manager.backend

    def config(self, key, value):
        self.shell.run_line_magic("config", "DockerRun.%s = %r" % (key, value))

    def line(self, line):
        """A %dockerrun line magic; returns what it printed."""
        sink = Sink()
        saved = sys.stdout
        sys.stdout = sink
        try:
            self.shell.run_line_magic("dockerrun", line)
        finally:
            sys.stdout = saved
        return sink.text()

    def cleanup(self):
        if self._cleaned:
            return
        self._cleaned = True
        log("cleaning up (scope %s)" % self.scope)
        if self.kernel is not None:
            self.kernel.shutdown()
        if self.shell is not None:
            try:
                pool = getattr(self.manager, "pool", None)
                if pool is not None:
                    pool.close()  # its thread must not make containers while we remove them
                self.manager.close()
            except Exception as exc:
                log("closing the manager: %s" % exc)
        from fiddledock_magic._spec import scope_id
        ids = [c.id for c in self.docker.containers.list(
            all=True, filters={"label": "fiddledock.scope=%s" % scope_id(self.scope)})]
        ids += [c.id for c in self.docker.containers.list(
            all=True, filters={"label": "fiddledock.bench=%s" % self.run_id})]
        self.remove(ids)
        left = self.docker.containers.list(
            all=True, filters={"label": "fiddledock.scope=%s" % scope_id(self.scope)})
        if left:
            log("WARNING: %d container(s) of scope %s are left" % (len(left), self.scope))

    def remove(self, ids):
        def rm(cid):
            try:
                self.docker.api.remove_container(cid, force=True, v=True)
            except Exception as exc:
                if "404" not in str(exc) and "409" not in str(exc):
                    log("remove %s: %s" % (cid[:12], exc))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(rm, set(ids)))

    # --- running cells ---------------------------------------------------------------
    def cell(self, name, code, keep=True, expect=None):
        """Run a %%dockerrun cell in process; (seconds, stdout text or char count)."""
        out, err = Sink(keep), Sink()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        t0 = time.perf_counter()
        try:
            self.shell.run_cell_magic("dockerrun", name, code)
            elapsed = time.perf_counter() - t0
        except Exception as exc:
            sys.stdout, sys.stderr = saved
            raise BenchError("cell in %s failed: %r; stderr: %s" % (name, exc, err.text()[-500:]))
        finally:
            sys.stdout, sys.stderr = saved
        if expect is not None and out.text() != expect:
            raise BenchError("cell in %s printed %r, expected %r (stderr %r)"
                             % (name, out.text()[:200], expect, err.text()[-300:]))
        return elapsed, (out.text() if keep else out.chars)

    def container_of(self, name):
        return self.manager.instances[name].container_id

    def run_cmd(self, argv, expect=None):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise BenchError("%s failed (%d): %s" % (" ".join(argv[:4]), proc.returncode,
                                                    proc.stderr.decode(errors="replace")[-300:]))
        if expect is not None and proc.stdout.decode() != expect:
            raise BenchError("%s printed %r" % (" ".join(argv[:4]), proc.stdout[:100]))
        return elapsed

    # --- results ---------------------------------------------------------------------
    def record(self, key, label, seconds, **extra):
        m = summary(seconds)
        m["label"] = label
        m.update(extra)
        self.metrics[key] = m
        log("%-52s p50 %8.2f ms  p95 %8.2f ms  (n=%d)" % (label, m["p50_ms"], m["p95_ms"], m["n"]))
        return m

    def target(self, name, ratio, limit, kind, explain, unit="x", info=False):
        """kind 'max': ratio <= limit is met; 'min': ratio >= limit is met.

        ``info``: not one of the speed targets, shown for comparison only.
        """
        met = None if ratio is None else (ratio <= limit if kind == "max" else ratio >= limit)
        self.targets.append({"target": name, "ratio": None if ratio is None else round(ratio, 4),
                             "unit": unit, "limit": limit, "kind": kind, "met": met,
                             "info": info, "how": explain})

    def not_available(self, name, why):
        self.targets.append({"target": name, "ratio": None, "limit": None, "kind": None,
                             "met": None, "how": "not available: %s" % why})

    # --- sections ------------------------------------------------------------------------
    def section_warm(self):
        """Warm cell vs local ipykernel, docker exec, python -c; interleaved rounds."""
        rounds = 2 if self.args.quick else 5
        per = 50 if self.args.quick else 25  # magic cells per round: >= 100 in total
        kper = per
        slow = 2 if self.args.quick else 4  # docker exec / python -c per round
        log("warm cell: %d rounds" % rounds)
        self.cell("warm", "print('hi')", expect="hi\n")  # creates the instance
        cid = self.container_of("warm")
        self.kernel.execute("%%dockerrun kwarm\nprint('hi')")  # creates the kernel's instance
        magic, kernel, kmagic, dexec, pyc, floor = [], [], [], [], [], []
        conn = self.manager.instances["warm"].connection
        exec_argv = ["docker", "exec", cid, "python3", "-c", "print('hi')"]
        py_argv = [sys.executable, "-c", "print('hi')"]
        for _ in range(3):  # warm up every route once
            self.cell("warm", "print('hi')", expect="hi\n")
            self.kernel.execute("print('hi')")
        for r in range(rounds):
            for _ in range(per):
                magic.append(self.cell("warm", "print('hi')", expect="hi\n")[0])
            for _ in range(kper):
                dt, out = self.kernel.execute("print('hi')")
                if out != "hi\n":
                    raise BenchError("kernel printed %r" % out)
                kernel.append(dt)
            for _ in range(kper):
                dt, out = self.kernel.execute("%%dockerrun kwarm\nprint('hi')")
                if out != "hi\n":
                    raise BenchError("kernel %%%%dockerrun printed %r" % out)
                kmagic.append(dt)
            for _ in range(per):
                floor.append(self.hello_round_trip(conn))
            for _ in range(slow):
                dexec.append(self.run_cmd(exec_argv, expect="hi\n"))
                pyc.append(self.run_cmd(py_argv, expect="hi\n"))
        m = self.record("warm_cell", "warm cell %%dockerrun print('hi') (in process)", magic)
        k = self.record("ipykernel", "baseline: local ipykernel round trip", kernel)
        e = self.record("docker_exec", "baseline: docker exec CLI python3 -c", dexec)
        p = self.record("python_c", "baseline: new local python -c process", pyc)
        km = self.record("warm_cell_kernel", "warm cell through a real ipykernel", kmagic)
        f = self.record("agent_hello", "floor: agent hello->ready over the channel", floor)
        self.target("warm cell p50 <= 0.25x ipykernel round trip",
                    m["p50_ms"] / k["p50_ms"], 0.25, "max",
                    "%.2f ms vs %.2f ms" % (m["p50_ms"], k["p50_ms"]))
        self.target("warm cell p50 >= 50x faster than docker exec",
                    e["p50_ms"] / m["p50_ms"], 50, "min",
                    "%.2f ms vs %.2f ms" % (m["p50_ms"], e["p50_ms"]))
        self.metrics["warm_cell"]["vs_python_c"] = round(m["p50_ms"] / p["p50_ms"], 4)
        self.metrics["warm_cell_kernel"]["vs_ipykernel"] = round(km["p50_ms"] / k["p50_ms"], 4)
        self.metrics["agent_hello"]["share_of_warm_cell"] = round(f["p50_ms"] / m["p50_ms"], 4)

    def hello_round_trip(self, conn):
        """Transport floor: one hello frame to the agent and its ready answer."""
        t0 = time.perf_counter()
        conn.send({"type": "hello"})
        while True:
            frame = conn.recv(timeout=10)
            if frame is None:
                raise BenchError("agent did not answer hello")
            if frame[0].get("type") == "ready":
                return time.perf_counter() - t0

    def docker_run_pass(self, runtime=None):
        argv = ["docker", "run", "--rm"]
        if runtime:
            argv += ["--runtime", runtime, "--network", "none"]
        argv += ["--label", "fiddledock.bench=%s" % self.run_id, self.image, "python3", "-c", "pass"]
        return self.run_cmd(argv)

    def first_cells(self, prefix, reps, runtime=None):
        """First cell in brand-new instances, interleaved with docker run --rm."""
        firsts, runs = [], []
        self.docker_run_pass(runtime)  # page cache warm for both
        for i in range(reps):
            name = "%s%d" % (prefix, i)
            firsts.append(self.cell(name, "print('hi')", expect="hi\n")[0])
            runs.append(self.docker_run_pass(runtime))
        return firsts, runs

    def section_first(self):
        reps = 3 if self.args.quick else 6
        log("first cell: %d new instances" % reps)
        firsts, runs = self.first_cells("first", reps)
        self.delete_instances(["first%d" % i for i in range(reps)])
        f = self.record("first_cell", "first cell in a new instance", firsts)
        d = self.record("docker_run", "baseline: docker run --rm IMAGE python3 -c pass", runs)
        self.target("first cell p50 <= 1.2x docker run --rm", f["p50_ms"] / d["p50_ms"], 1.2, "max",
                    "%.0f ms vs %.0f ms" % (f["p50_ms"], d["p50_ms"]))
        self.section_pool(reps, d)

    def section_pool(self, reps, docker_run):
        name = "first cell from a ready pool <= 0.2x docker run --rm"
        from fiddledock_magic._extension import _STATE
        magics = getattr(self.shell, _STATE)[2]
        if "pool" not in magics.commands.names():
            log("pool: not available (no %dockerrun pool subcommand)")
            self.not_available(name, "no `%dockerrun pool` subcommand in this build")
            return
        size = 2
        log("pool: %%dockerrun pool %d; %d first cells, each from a full, idle pool" % (size, reps))
        self.line("pool %d" % size)
        firsts = []
        try:
            for i in range(reps):
                self.wait_pool_ready(size)
                firsts.append(self.cell("pooled%d" % i, "print('hi')", expect="hi\n")[0])
        finally:
            self.line("pool 0")
            self.delete_instances(["pooled%d" % i for i in range(reps)])
        p = self.record("pool_first_cell", "first cell from a ready pool", firsts)
        self.target(name, p["p50_ms"] / docker_run["p50_ms"], 0.2, "max",
                    "%.0f ms vs %.0f ms" % (p["p50_ms"], docker_run["p50_ms"]))

    def wait_pool_ready(self, size, timeout=120):
        """Until the pool holds `size` booted containers and is not filling."""
        pool = self.manager.pool
        deadline = time.monotonic() + timeout
        while not pool.wait(max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise BenchError("the pool did not fill: %s" % pool.describe())
            time.sleep(0.5)  # a fill error: the pool retries after a back-off
        if pool.ready_count() < size:
            raise BenchError("the pool holds %d, not %d" % (pool.ready_count(), size))

    def delete_instances(self, names):
        ids = []
        for name in names:
            inst = self.manager.instances.pop(name, None)
            if inst is not None:
                inst.disconnect()
                ids.append(inst.container_id)
        self.remove(ids)

    def section_first_output(self):
        reps = 3 if self.args.quick else 7
        log("time to first output: %d cells that print then sleep 1 s" % reps)
        from fiddledock_magic import _render
        code = "import time\nprint(repr(time.time()))\ntime.sleep(1)"
        arrivals = []
        orig = _render.CellRenderer.stream

        def stream(self, name, data):  # noqa: the renderer's own stream, timed after it wrote
            orig(self, name, data)
            arrivals.append((time.time(), bytes(data)))
        _render.CellRenderer.stream = stream
        lat = []
        try:
            for _ in range(reps):
                del arrivals[:]
                self.cell("warm", code)
                t_arrive, data = arrivals[0]
                lat.append(t_arrive - float(data.decode().split()[0]))
        finally:
            _render.CellRenderer.stream = orig
        klat = []
        for _ in range(reps):
            seen = []

            def on_iopub(t, msg):
                if msg["msg_type"] == "stream" and not seen:
                    seen.append((t, msg["content"]["text"]))
            self.kernel.execute("%%dockerrun kwarm\n" + code, on_iopub=on_iopub)
            klat.append(seen[0][0] - float(seen[0][1].split()[0]))
        r = self.record("first_output", "time to first output (at the renderer)", lat)
        self.record("first_output_kernel", "time to first output (iopub, kernel client)", klat)
        self.target("time to first output p50 <= 10 ms", r["p50_ms"], 10.0, "max",
                    "print in the container -> CellRenderer.stream wrote it; via a kernel's iopub %.2f ms"
                    % self.metrics["first_output_kernel"]["p50_ms"], unit="ms")

    def section_throughput(self):
        reps = 2 if self.args.quick else 5
        size_mib = 50
        total = size_mib * MIB
        log("throughput: %d MiB to stdout, %d reps each, interleaved" % (size_mib, reps))
        gen = ("import sys\nchunk = ('x' * 1023 + '\\n') * 1024\n"
               "for _ in range(%d):\n    sys.stdout.write(chunk)\nsys.stdout.flush()\n" % size_mib)
        saved_limit = self.manager.config.output_limit
        self.config("output_limit", total + MIB)
        magic, raw = [], []
        try:
            for _ in range(reps):
                dt, chars = self.cell("warm", gen, keep=False)
                if chars != total:
                    raise BenchError("the 50 MiB cell delivered %d chars, not %d" % (chars, total))
                magic.append(dt)
                raw.append(self.raw_stream(gen, total))
        finally:
            self.config("output_limit", saved_limit)
        m = self.record("throughput_cell", "50 MiB cell to stdout (seconds)", magic)
        r = self.record("throughput_raw", "baseline: raw attach stream of 50 MiB", raw)
        for rec, times in ((m, magic), (r, raw)):
            rec["mib_per_s"] = round(size_mib / pct(times, 50), 1)
            rec["mib_per_s_best"] = round(size_mib / min(times), 1)
        log("throughput: cell %.0f MiB/s, raw attach %.0f MiB/s (best: %.0f vs %.0f)"
            % (m["mib_per_s"], r["mib_per_s"], m["mib_per_s_best"], r["mib_per_s_best"]))
        self.target("output throughput >= 30% of a raw attach stream",
                    m["mib_per_s"] / r["mib_per_s"], 0.30, "min",
                    "medians %.0f vs %.0f MiB/s; best runs %.0f vs %.0f MiB/s"
                    % (m["mib_per_s"], r["mib_per_s"], m["mib_per_s_best"], r["mib_per_s_best"]))

    def raw_stream(self, gen, total):
        """Seconds for `total` stdout bytes from a container of the same image and settings.

        The container is created like an instance (same hardening, log driver
        none) but runs the generator directly; it waits for a line on stdin so
        container start is not timed, then we read the attach socket raw.
        """
        from fiddledock_magic._spec import InstanceSpec
        code = "import sys\nsys.stdin.readline()\n" + gen
        spec = InstanceSpec(image=self.image).validate()
        config, host = spec.container_config(["python3", "-c", code],
                                             {"fiddledock.bench": self.run_id})
        config.update(stdin_open=True, user="1000:1000")  # read raw, as the sandbox user
        cid = self.backend.create_container("fiddledock-bench-raw-%s" % uuid.uuid4().hex[:8],
                                            config, host)
        sock, _ = self.backend.attach(cid)
        try:
            self.backend.start(cid)
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            header = bytearray()
            remaining = 0
            stream = 0
            got = 0
            t0 = time.perf_counter()
            sock.sendall(b"go\n")
            while got < total:
                n = sock.recv_into(buf)
                if not n:
                    raise BenchError("raw stream ended after %d bytes" % got)
                i = 0
                while i < n:
                    if remaining == 0:
                        take = min(8 - len(header), n - i)
                        header += view[i:i + take]
                        i += take
                        if len(header) == 8:
                            stream, remaining = struct.unpack(">BxxxL", header)
                            header.clear()
                    else:
                        take = min(remaining, n - i)
                        if stream == 1:
                            got += take
                        remaining -= take
                        i += take
            return time.perf_counter() - t0
        finally:
            sock.close()
            self.remove([cid])

    def scale(self, runtime, count):
        """`count` instances, each running a cell (all checked), then their idle memory."""
        prefix = "scale%s" % runtime
        self.config("runtime", runtime)
        names = ["%s%02d" % (prefix, i) for i in range(count)]
        code = "import socket\nprint(socket.gethostname(), %r * 2)"
        t0 = time.perf_counter()
        starts = []
        hosts = set()
        try:
            for name in names:
                dt, text = self.cell(name, code % name)
                starts.append(dt)
                host, word = text.split()
                if word != name * 2:
                    raise BenchError("instance %s printed %r" % (name, text))
                hosts.add(host)
            # with all of them up, each runs one more cell
            again = [self.cell(name, "print(6 * 7)", expect="42\n")[0] for name in names]
        finally:
            self.config("runtime", "runc")
        wall = time.perf_counter() - t0
        correct = len(hosts) == count
        time.sleep(2)  # idle: let the cells' allocations settle
        ids = [self.container_of(n) for n in names]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            stats = list(pool.map(
                lambda cid: self.docker.api.stats(cid, stream=False, one_shot=True), ids))
        used, raw = [], []
        for s in stats:
            mem = s.get("memory_stats") or {}
            usage = mem.get("usage") or 0
            inactive = (mem.get("stats") or {}).get("total_inactive_file",
                                                   (mem.get("stats") or {}).get("inactive_file", 0))
            raw.append(usage / MIB)
            used.append((usage - inactive if inactive < usage else usage) / MIB)
        self.delete_instances(names)
        result = {
            "instances": count, "all_correct": correct, "distinct_containers": len(hosts),
            "seconds_total": round(wall, 2),
            "first_cell_p50_ms": round(pct(starts, 50) * 1e3, 1),
            "second_cell_p50_ms": round(pct(again, 50) * 1e3, 2),
            "mem_mib_median": round(statistics.median(used), 2), "mem_mib_max": round(max(used), 2),
            "mem_usage_incl_cache_mib_median": round(statistics.median(raw), 2),
            "mem_source": "docker stats: usage - total_inactive_file (what `docker stats` shows)",
        }
        log("scale %s: %d instances in %.1f s, all correct: %s, idle memory median %.1f MiB, "
            "max %.1f MiB" % (runtime, count, wall, correct, result["mem_mib_median"],
                              result["mem_mib_max"]))
        return result

    def section_scale(self):
        count = 5 if self.args.quick else 20
        runtimes = ["runc"] + (["runsc"] if self.has_runsc else [])
        for rt in runtimes:
            log("scale: %d instances under %s" % (count, rt))
            res = self.scale(rt, count)
            self.metrics["scale_%s" % rt] = res
            self.target("%d instances under %s, each ran a cell, all correct" % (count, rt),
                        1.0 if res["all_correct"] else 0.0, 1.0, "min",
                        "%d distinct containers in %.1f s" % (res["distinct_containers"],
                                                              res["seconds_total"]), unit="bool")
            self.target("idle instance memory under %s <= 20 MB" % rt,
                        res["mem_mib_max"] * MIB / 1e6, 20.0, "max",
                        "max of %d; median %.1f MiB, max %.1f MiB" % (count, res["mem_mib_median"],
                                                                 res["mem_mib_max"]), unit="MB")
        if not self.has_runsc:
            self.not_available("scale under gVisor", "runsc is not registered with the engine")

    def section_gvisor(self):
        if not self.has_runsc:
            self.not_available("gVisor warm and first cell", "runsc is not registered (docker info)")
            return
        rounds = 2 if self.args.quick else 4
        per = 25
        log("gVisor: warm cells runc vs runsc, %d rounds" % rounds)
        self.config("runtime", "runsc")
        try:
            self.cell("gwarm", "print('hi')", expect="hi\n")
            for _ in range(3):
                self.cell("gwarm", "print('hi')", expect="hi\n")
            runc, runsc = [], []
            for _ in range(rounds):
                for _ in range(per):
                    runc.append(self.cell("warm", "print('hi')", expect="hi\n")[0])
                for _ in range(per):
                    runsc.append(self.cell("gwarm", "print('hi')", expect="hi\n")[0])
            reps = 2 if self.args.quick else 4
            log("gVisor: %d first cells vs docker run --rm --runtime runsc" % reps)
            firsts, runs = self.first_cells("gfirst", reps, runtime="runsc")
            self.delete_instances(["gfirst%d" % i for i in range(reps)] + ["gwarm"])
        finally:
            self.config("runtime", "runc")
        a = self.record("gvisor_warm_runc", "warm cell under runc (same rounds)", runc)
        b = self.record("gvisor_warm_runsc", "warm cell under runsc", runsc)
        f = self.record("gvisor_first_cell", "first cell in a new runsc instance", firsts)
        d = self.record("gvisor_docker_run", "baseline: docker run --rm --runtime runsc", runs)
        b["vs_runc"] = round(b["p50_ms"] / a["p50_ms"], 3)
        f["vs_runc_first_cell"] = (round(f["p50_ms"] / self.metrics["first_cell"]["p50_ms"], 3)
                                   if "first_cell" in self.metrics else None)
        k = self.metrics.get("ipykernel")
        if k:
            self.target("runsc warm cell vs ipykernel round trip (runc's 0.25x)",
                        b["p50_ms"] / k["p50_ms"], 0.25, "max",
                        "%.2f ms vs %.2f ms; %.1fx the runc warm cell (%.2f ms)"
                        % (b["p50_ms"], k["p50_ms"], b["vs_runc"], a["p50_ms"]), info=True)
        self.target("runsc first cell vs docker run --rm --runtime runsc (runc's 1.2x)",
                    f["p50_ms"] / d["p50_ms"], 1.2, "max",
                    "%.0f ms vs %.0f ms" % (f["p50_ms"], d["p50_ms"]), info=True)

    def profile_warm(self):
        """Where a warm cell's time goes: a timestamp breakdown, then pyinstrument."""
        from pyinstrument import Profiler
        from fiddledock_magic import _render
        self.cell("warm", "print('hi')", expect="hi\n")
        n = 300
        log("profile: breakdown of %d warm cells by timestamps" % n)
        # The cell's code reads the shared kernel clock as its first act and prints it.
        code = "import time as _t; print(repr(_t.time()))"
        marks = []
        orig = _render.CellRenderer.stream

        def stream(self, name, data):
            orig(self, name, data)
            marks.append((time.time(), bytes(data)))
        _render.CellRenderer.stream = stream
        parts = {"to_container": [], "back_to_renderer": [], "done_to_return": [], "total": []}
        try:
            for _ in range(n):
                del marks[:]
                t0 = time.time()
                self.cell("warm", code)
                t3 = time.time()
                t2, data = marks[0]
                t1 = float(data.decode())
                parts["to_container"].append(t1 - t0)
                parts["back_to_renderer"].append(t2 - t1)
                parts["done_to_return"].append(t3 - t2)
                parts["total"].append(t3 - t0)
        finally:
            _render.CellRenderer.stream = orig
        breakdown = {k: round(pct(v, 50) * 1e3, 3) for k, v in parts.items()}
        self.metrics["warm_cell_breakdown_p50_ms"] = breakdown
        log("breakdown p50 (ms): %s" % breakdown)
        log("profile: %d warm cells under pyinstrument" % n)
        prof = Profiler(interval=0.0001)
        prof.start()
        for _ in range(n):
            self.cell("warm", "print('hi')", expect="hi\n")
        prof.stop()
        text = prof.output_text(unicode=False, color=False, show_all=False)
        path = os.path.join(RESULTS, "profile-warm.txt")
        with open(path, "w") as f:
            f.write(text)
        self.notes.append("warm cell profile (pyinstrument, %d cells): %s" % (n, path))
        log("profile written to %s" % path)

    # --- the whole run ------------------------------------------------------------
    def run(self):
        started = time.time()
        load0 = os.getloadavg()
        self.start_shell()
        log("scope %s; starting a local ipykernel" % self.scope)
        self.kernel = Kernel({"JPY_SESSION_NAME": self.scope})
        self.kernel.execute("%load_ext fiddledock_magic")
        self.kernel.execute("%%config DockerRun.scope = %r" % self.scope)
        sections = [self.section_warm, self.section_first, self.section_first_output,
                    self.section_throughput, self.section_scale, self.section_gvisor]
        sections.append(__import__("runsc_flags").section(self))  # own private engine; bench/runsc_flags.py
        sections.append(__import__("start").section(self))  # bench/start.py
        sections.append(__import__("memory").section(self))  # bench/memory.py: --only memory
        sections.append(__import__("crowd").section(self))  # bench/crowd.py: --only crowd
        only = set(self.args.only or [])
        for section in sections:
            if only and section.__name__.replace("section_", "") not in only:
                continue
            try:
                section()
            except BenchError as exc:
                log("%s FAILED: %s" % (section.__name__, exc))
                self.targets.append({"target": section.__name__, "ratio": None, "limit": None,
                                     "kind": None, "met": False, "how": "failed: %s" % exc})
        if self.args.profile:
            self.profile_warm()
        return self.report(started, load0)

    def report(self, started, load0):
        server = self.docker.version()
        return {
            "when": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1),
            "command": " ".join(["bench/run.py"] + sys.argv[1:]),
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_start": [round(x, 2) for x in load0],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "docker_server": server.get("Version"),
                "docker_api": server.get("ApiVersion"),
                "gvisor": self.has_runsc,
                "image": self.image,
            },
            "method": {
                "magic": "in process: shell.run_cell_magic on a real IPython shell, sys.stdout/"
                         "stderr swapped for an in-memory sink; magic called to magic returned",
                "ipykernel": "jupyter_client BlockingKernelClient: execute request to execute_reply "
                             "with iopub drained to status idle",
                "first_output": "CellRenderer.stream wrapped: host time.time() after it wrote the "
                                "chunk, minus time.time() printed in the container (same kernel clock)",
                "throughput": "50 MiB of text lines via sys.stdout.write in the cell; renderer output "
                              "into a counting sink; baseline: same code and container settings, "
                              "read raw from Engine.attach",
                "memory": "docker stats (API, one-shot): usage - total_inactive_file",
                "percentiles": "nearest rank",
            },
            "metrics": self.metrics,
            "targets": self.targets,
            "notes": self.notes,
        }


# --- output ---------------------------------------------------------------------------
def table(rows, headers):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join([line, sep] + body)


def render(result):
    rows = []
    for key, m in result["metrics"].items():
        if "p50_ms" in m:
            extra = ""
            if "mib_per_s" in m:
                extra = "%.0f MiB/s" % m["mib_per_s"]
            rows.append((m["label"], "%.2f ms" % m["p50_ms"], "%.2f ms" % m["p95_ms"], m["n"], extra))
    for key, m in result["metrics"].items():
        if key.startswith("scale_"):
            rows.append(("%d instances (%s), each ran a cell" % (m["instances"], key[6:]),
                         "%.0f ms" % m["first_cell_p50_ms"], "", m["instances"],
                         "all correct: %s; idle memory median %.1f / max %.1f MiB"
                         % (m["all_correct"], m["mem_mib_median"], m["mem_mib_max"])))
    out = [table(rows, ("measurement", "p50", "p95", "n", "note")), ""]
    trows = []
    for t in result["targets"]:
        if t["met"] is None:
            verdict = "not available" if t["how"].startswith("not available") else "-"
        else:
            verdict = "met" if t["met"] else "MISSED"
            if t.get("info"):
                verdict = "info (%s)" % ("would be met" if t["met"] else "would miss")
        if t["ratio"] is None:
            ratio = ""
        elif t.get("unit") == "x":
            ratio = "%.3gx" % t["ratio"]
        elif t.get("unit") == "bool":
            ratio = "yes" if t["ratio"] else "no"
        else:
            ratio = "%.3g %s" % (t["ratio"], t.get("unit", ""))
        trows.append((t["target"], ratio, verdict, t["how"]))
    out.append(table(trows, ("target", "measured", "verdict", "detail")))
    mach = result["machine"]
    out.append("")
    out.append("%s, %d CPUs, load %s -> %s, docker %s, %.0f s; numbers on a shared machine are noisy: "
               "compare ratios, not times." % (result["when"], mach["cpus"], mach["loadavg_start"][0],
                                              mach["loadavg_end"][0], mach["docker_server"],
                                              result["seconds"]))
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke check)")
    parser.add_argument("--profile", action="store_true", help="also profile warm cells (pyinstrument)")
    parser.add_argument("--no-gvisor", action="store_true", help="skip runsc even if registered")
    parser.add_argument("--only", nargs="*", metavar="SECTION",
                        help="warm first first_output throughput scale gvisor runsc_flags start memory "
                             "crowd")
    parser.add_argument("--out", default=os.path.join(RESULTS, "latest.json"))
    parser.add_argument("--show", metavar="JSON", help="print the tables of a saved run and exit")
    args = parser.parse_args(argv)
    if args.show:
        with open(args.show) as f:
            result = json.load(f)
        OUT.write("Command: `.venv/bin/python %s`\n\n%s\n" % (result["command"], render(result)))
        return 0
    os.makedirs(RESULTS, exist_ok=True)
    bench = Bench(args)
    atexit.register(bench.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = bench.run()
    finally:
        bench.cleanup()
    text = render(result)
    OUT.write(text + "\n")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write("Command: `.venv/bin/python %s`\n\n%s\n" % (result["command"], text))
    stamp = re.sub(r"[^0-9T]", "", result["when"])
    shutil.copyfile(args.out, os.path.join(RESULTS, "run-%s.json" % stamp))
    OUT.write("written %s\n" % os.path.relpath(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
