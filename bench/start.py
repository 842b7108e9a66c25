"""Starting together: N new instances at once, next to N sequential `docker run --rm`.

    .venv/bin/python bench/run.py --only start    # N = 30 (--quick: 6); FIDDLEDOCK_BENCH_START=N

Measured in one run, side by side, each twice, interleaved (so a burst of load elsewhere hits
all of them):

- baseline: N sequential ``docker run --rm --network none IMAGE python3 -c pass`` (the CLI);
- together: one multi-instance cell ``%%dockerrun s00 s01 ...`` on N names that do not exist
  yet: each instance is created and runs the cell (each section's output is checked);
- pooled: the same cell after ``%dockerrun pool N`` filled (how long the pool took to fill
  is shown, not counted).

Targets: together <= 0.4x the baseline, pooled <= 0.1x. Where the time goes: the backend's
calls and the agent's handshake are timed per instance (one new instance alone, and the
sum over the N of a together run and of a pooled one), next to CPU seconds: the engine's
(dockerd and its containerd), the docker CLI's, and inside each container (cgroup v1
cpuacct; for the one alone, per process: docker-init, the relay, the agent). Starting
together is bound by CPU on a small machine, so the load average is noted (the machine
is shared). Everything made here carries the bench's scope or label and is removed at the
end, also on Ctrl-C (bench/run.py's cleanup; a Ctrl-C while a measured cell runs is that
cell's stop button, as in a notebook: the cell ends interrupted and the section fails).
"""

import collections
import functools
import os
import re
import sys
import threading
import time
import types

run = None  # bench/run.py's module (its helpers), set by section()

CPUACCT = "/sys/fs/cgroup/cpuacct/docker/%s/cpuacct.usage"
CODE = "import os\nprint('instance ready', os.getpid() > 0)"
ROUNDS = 2
PHASES = (  # (what is timed, its label in the breakdown)
    ("inspect", "engine: inspect (does the name exist)"),
    ("image_exists", "engine: image inspect"),
    ("rename", "engine: rename (a pool container taken)"),
    ("create", "engine: create"),
    ("start", "engine: start (runc, docker-init, the bootstrap's python)"),
    ("exec_socket", "engine: exec create + start request"),
    ("greeted", "relay exec'd + its python + hello answered (need_boot)"),
    ("booted", "boot sent + agent compiled and started + ready"),
    ("execute", "the first cell (worker) to done"),
)


def section(bench):
    """The section as bench/run.py calls it (named ``section_start``)."""
    global run
    run = sys.modules[type(bench).__module__]  # run.py is __main__: its own classes
    return types.MethodType(section_start, bench)


def engine_cpu():
    """CPU seconds used so far by the engine of /var/run/docker.sock and its containerd."""
    try:
        with open("/var/run/docker.pid") as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError):
        return None
    pids = [pid] + [int(p) for p in _children(pid)]
    total = 0.0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return f.read().split()
    except OSError:
        return []


class Phases:
    """Times the backend's calls and the agent handshake, per thread, while installed."""

    def __init__(self, backend):
        from fiddledock_magic import _instance
        self.marks = collections.defaultdict(list)  # thread name -> [(phase, seconds)]
        self.lock = threading.Lock()
        self.undo = []
        for name in ("inspect", "image_exists", "rename", "create", "start", "exec_socket"):
            self._wrap(backend, name, name)
        self._wrap(_instance.Instance, "_execute", "execute")
        cls = _instance.Instance
        orig_wait, orig_boot = cls._wait, cls._boot
        phases = self

        def _wait(inst, conn, kinds):  # the first wait greets, the second ends the boot
            label = "greeted" if "need_boot" in kinds else "booted"
            t0 = time.perf_counter()
            try:
                return orig_wait(inst, conn, kinds)
            finally:
                phases.add(label, time.perf_counter() - t0
                           + getattr(inst, "_bench_boot_seconds", 0.0))

        def _boot(inst, conn):
            t0 = time.perf_counter()
            try:
                return orig_boot(inst, conn)
            finally:
                inst._bench_boot_seconds = time.perf_counter() - t0
        self._set(cls, "_wait", _wait)
        self._set(cls, "_boot", _boot)

    def _set(self, owner, name, value):
        had = name in vars(owner)
        old = vars(owner).get(name)
        setattr(owner, name, value)
        self.undo.append(lambda: setattr(owner, name, old) if had else delattr(owner, name))

    def _wrap(self, owner, name, label):
        orig = getattr(owner, name)
        phases = self

        @functools.wraps(orig)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                phases.add(label, time.perf_counter() - t0)
        self._set(owner, name, timed)

    def add(self, label, seconds):
        if threading.current_thread().name.startswith("fiddledock-pool"):
            return  # the pool's own filling: not a start being measured
        with self.lock:
            self.marks[threading.current_thread().name].append((label, seconds))

    def reset(self):
        with self.lock:
            self.marks.clear()

    def totals(self):
        """phase -> (calls, seconds in all threads)."""
        out = collections.OrderedDict((p, [0, 0.0]) for p, _ in PHASES)
        with self.lock:
            for marks in self.marks.values():
                for label, seconds in marks:
                    out[label][0] += 1
                    out[label][1] += seconds
        return out

    def remove(self):
        for undo in reversed(self.undo):
            undo()
        self.undo = []


def many_cell(bench, names):
    """One multi-instance cell on names; seconds. Each section must show the cell's output."""
    dt, text = bench.cell(" ".join(names), CODE)
    if len(names) == 1:  # a one-instance cell: no sections
        text = "--- %s ---\n%s" % (names[0], text)
    parts = re.split(r"^--- (.*) ---$", text, flags=re.M)  # a header, then its section
    shown = {}
    for header, body in zip(parts[1::2], parts[2::2]):
        shown[header.split(":")[0]] = body
    for name in names:
        if "instance ready True" not in shown.get(name, ""):
            raise run.BenchError("instance %s did not show the cell's output: %r"
                             % (name, shown.get(name, text[-300:])))
    return dt


def docker_runs(bench, count):
    argv = ["docker", "run", "--rm", "--network", "none", "--label",
            "fiddledock.bench=%s" % bench.run_id, bench.image, "python3", "-c", "pass"]
    t0 = time.perf_counter()
    for _ in range(count):
        bench.run_cmd(argv)
    return time.perf_counter() - t0


def remove_all(bench):
    """This section's instances, gone (the pool's containers stay in the pool)."""
    bench.manager.delete_all(by="by the bench")
    bench.manager.instances.clear()


def container_cpu(bench):
    """CPU seconds used by the processes of this section's running instances (cgroup v1
    cpuacct: everything in each container since it started, runc's init included); None
    where the engine's cgroups are not found there."""
    total = 0.0
    for inst in bench.manager.instances.values():
        try:
            with open(CPUACCT % inst.container_id) as f:
                total += int(f.read()) / 1e9
        except (OSError, ValueError):
            return None
    return total


# A cell that reads, for each process of its container, its CPU seconds so far.
PROCESS_CPU = r"""
import os
tick = os.sysconf("SC_CLK_TCK")
for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
    try:
        stat = open("/proc/%s/stat" % pid).read()
        argv = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
    except OSError:
        continue
    fields = stat.rsplit(")", 1)[1].split()
    print(pid, (int(fields[11]) + int(fields[12])) / tick, argv[0].decode(), argv[1][:8].decode())
"""
PROCESS_ROLES = (  # how the argv of a container's process tells what it is
    (lambda argv0, argv1: "docker-init" in argv0, "docker-init (with runc's init before it)"),
    (lambda argv0, argv1: "sleep" in argv0, "relay (runc exec's init, python -I -S, then sleep)"),
    (lambda argv0, argv1: argv0.startswith("python"), "bootstrap + agent (python, compile, "
                                                      "supervisor), then worker"),
)


def one_alone(bench, phases):
    """One new instance started alone: seconds, its phases, its processes' CPU seconds."""
    phases.reset()
    dt = many_cell(bench, ["alone"])
    totals = phases.totals()
    _, text = bench.cell("alone", PROCESS_CPU)
    cpu = collections.OrderedDict((label, 0.0) for _, label in PROCESS_ROLES)
    for line in text.splitlines():
        pid, seconds, argv0, argv1 = (line.split() + ["", ""])[:4]
        for test, label in PROCESS_ROLES:
            if test(argv0, argv1):
                cpu[label] += float(seconds)
                break
    remove_all(bench)
    return dt, totals, cpu


def timed(fn, *args):
    """``(what fn returned, engine CPU seconds meanwhile)`` (None: not measurable here)."""
    before = engine_cpu()
    value = fn(*args)
    after = engine_cpu()
    return value, (None if before is None or after is None else after - before)


def rounds(bench, count, names, phases):
    """The interleaved rounds: lists of figures by kind."""
    got = collections.defaultdict(list)
    for _ in range(ROUNDS):
        got["load"].append(os.getloadavg()[0])
        children = os.times()
        seconds, cpu = timed(docker_runs, bench, count)
        got["runs"].append(seconds)
        got["runs_engine_cpu"].append(cpu)
        got["runs_cli_cpu"].append(sum(os.times()[2:4]) - sum(children[2:4]))
        phases.reset()
        seconds, cpu = timed(many_cell, bench, names)
        got["together"].append(seconds)
        got["together_engine_cpu"].append(cpu)
        got["together_container_cpu"].append(container_cpu(bench))
        got["phases"] = phases.totals()
        remove_all(bench)
        t0 = time.perf_counter()
        bench.line("pool %d" % count)
        bench.wait_pool_ready(count, timeout=60 + 10 * count)
        got["fill"].append(time.perf_counter() - t0)
        phases.reset()
        got["pooled"].append(many_cell(bench, names))
        got["pooled_phases"] = phases.totals()
        bench.line("pool 0")
        remove_all(bench)
    return got


def section_start(bench):
    count = int(os.environ.get("FIDDLEDOCK_BENCH_START") or (6 if bench.args.quick else 30))
    names = ["s%02d" % i for i in range(count)]
    run.log("starting together: %d sequential docker run --rm vs %d new instances in one cell "
            "(DockerRun.parallel %d), alone and from a pool of %d; %d rounds, load %.1f"
            % (count, count, bench.manager.config.parallel, count, ROUNDS, os.getloadavg()[0]))
    bench.config("pool_size", 0)
    phases = Phases(bench.manager.backend)
    try:
        docker_runs(bench, 1)  # page cache warm for all
        alone, alone_phases, alone_cpu = one_alone(bench, phases)
        got = rounds(bench, count, names, phases)
    finally:
        phases.remove()
        try:
            bench.line("pool 0")
            remove_all(bench)
        except Exception as exc:  # bench/run.py's cleanup removes what is left
            run.log("start: cleanup: %s" % exc)
    report(bench, count, alone, alone_phases, alone_cpu, got)


def _figures(values, digits=2):
    return [None if v is None else round(v, digits) for v in values]


def report(bench, count, alone, alone_phases, alone_cpu, got):
    base, t, p = min(got["runs"]), min(got["together"]), min(got["pooled"])

    def per(values):  # ms per instance, each round's
        return "/".join("?" if v is None else "%.0f" % (v / count * 1e3) for v in values)
    bench.metrics["start_together"] = {
        "instances": count, "parallel": bench.manager.config.parallel,
        "loadavg_1min": _figures(got["load"], 1),
        "docker_run_sequential_s": _figures(got["runs"]), "together_s": _figures(got["together"]),
        "pooled_s": _figures(got["pooled"]), "pool_fill_s": _figures(got["fill"]),
        "one_alone_s": round(alone, 3),
        "engine_cpu_s": {"docker_runs": _figures(got["runs_engine_cpu"]),
                         "together": _figures(got["together_engine_cpu"])},
        "docker_cli_cpu_s": _figures(got["runs_cli_cpu"]),
        "container_cpu_s_together": _figures(got["together_container_cpu"]),
        "one_alone_process_cpu_s": {k: round(v, 3) for k, v in alone_cpu.items()},
        "phases_one_alone_ms": {k: round(v[1] * 1e3, 1) for k, v in alone_phases.items()},
        "phases_together_sum_s": {k: [v[0], round(v[1], 2)] for k, v in got["phases"].items()},
        "phases_pooled_sum_s": {k: [v[0], round(v[1], 2)]
                                for k, v in got["pooled_phases"].items()},
    }
    how = "best of %d rounds each; load %s" % (ROUNDS, ", ".join("%.1f" % x for x in got["load"]))
    bench.target("%d started together <= 0.4x %d sequential docker run --rm" % (count, count),
                 t / base, 0.4, "max", "%.1f s vs %.1f s; %s" % (t, base, how))
    bench.target("%d started together from a pool of %d <= 0.1x %d docker run --rm"
                 % (count, count, count), p / base, 0.1, "max",
                 "%.2f s vs %.1f s (the pool filled in %.1f s); %s" % (p, base, min(got["fill"]), how))
    rows = [(label, "%.0f ms" % (alone_phases[key][1] * 1e3),
             "%d: %.2f s" % tuple(got["phases"][key]),
             "%d: %.2f s" % tuple(got["pooled_phases"][key]))
            for key, label in PHASES if any(got[k][key][0] for k in ("phases", "pooled_phases"))
            or alone_phases[key][0]]
    text = run.table(rows, ("phase", "one alone", "together: calls: sum over threads",
                            "from the pool: calls: sum"))
    text += "\nCPU ms per instance: engine (dockerd + containerd) %s together vs %s per docker " \
            "run (its CLI %s); inside each container %s together; one alone: %s" % (
                per(got["together_engine_cpu"]), per(got["runs_engine_cpu"]),
                per(got["runs_cli_cpu"]), per(got["together_container_cpu"]),
                ", ".join("%s %.0f" % (k, v * 1e3) for k, v in alone_cpu.items()))
    run.log("where a start's time goes (one new instance alone: %.0f ms; %d together: %s s):\n%s"
            % (alone * 1e3, count, "/".join("%.1f" % x for x in got["together"]), text))
    bench.notes.append("start phases:\n" + text)
