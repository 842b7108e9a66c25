"""gVisor's runsc flags: what each saves and costs per FiddleDock instance, in one run.

    .venv/bin/python bench/runsc_flags.py            # ~4 min (root): table + bench/results/runsc_flags.json
    .venv/bin/python bench/runsc_flags.py --quick    # fewer instances and cells (~2 min)
    .venv/bin/python bench/run.py --only runsc_flags # the same, as a section of the bench

Needs root and runsc. Starts a private engine (scripts/test-engines.sh, its own
network namespace and data root; the main engine is never touched) and gives
its `runsc` runtime one set of runtimeArgs at a time (daemon.json rewritten,
dockerd reloaded with SIGHUP: a container keeps the arguments it was started
with). Each variant is `--network=none` (what the main engine registers) plus
its flags; runc and plain runsc are measured in the same rounds. The magic
runs in process on a real IPython shell with DOCKER_HOST at the private engine.

Per variant:
- first cell: `%%dockerrun NEW` + `print('hi')` in a new instance (rounds: one
  new instance of every variant per round, each round starting at another);
- warm cell: `print('hi')` in the variant's first instance, one cell per
  variant in turn;
- idle memory: two seconds after the last cell, `docker stats` (API, one shot)
  `usage - total_inactive_file`, median over the variant's instances; and the
  cgroup's memory.stat split (anon, shmem: gVisor's memory file, file cache);
- host PSS: the sum of Pss (/proc/PID/smaps_rollup) over the processes in the
  container's cgroup (runsc: its Sentry, the ptrace stubs and the gofer; runc:
  docker-init and the agent's processes), median over its instances. Pages of
  gVisor's memory file that no process maps are in the cgroup's usage but in
  nobody's PSS, so the two figures answer different questions: what the
  container is charged, and what its processes hold;
- safety probe: the same cell in each variant (read-only root, network
  interfaces, kernel, seccomp mode, tmpfs caps); its answer must equal plain
  runsc's.
Ratios are to plain runsc. The engine is stopped at the end, also on Ctrl-C.
"""

import argparse
import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "scripts", "test-engines.sh")
ENGINE = "rsflags"
ENGINE_DIR = "/var/lib/fiddledock-test/%s-1" % ENGINE
PIDFILE = "/run/fiddledock-test/%s-1.pid" % ENGINE
HOST = "unix:///run/fiddledock-test/%s-1.sock" % ENGINE
CGROUP = "/sys/fs/cgroup/memory/docker"  # cgroup v1, Docker's default parent
RUNSC = "/usr/bin/runsc"
BASE_ARGS = ["--network=none"]
MIB = 1 << 20

# (key, runtime, extra runsc flags); "runsc" is the reference every ratio is taken to.
VARIANTS = [
    ("runc", "runc", None),
    ("runsc", "runsc", []),
    ("overlay2=root:memory", "runsc", ["--overlay2=root:memory"]),
    ("overlay (all:memory)", "runsc", ["--overlay"]),
    ("file-access=shared", "runsc", ["--file-access=shared"]),
    ("file-access-mounts=exclusive", "runsc", ["--file-access-mounts=exclusive"]),
    ("dcache=100", "runsc", ["--dcache=100"]),
    ("buffer-pooling=false", "runsc", ["--buffer-pooling=false"]),
    ("cpu-num-from-quota", "runsc", ["--cpu-num-from-quota"]),
    ("oci-seccomp", "runsc", ["--oci-seccomp"]),
]

PROBE = r'''
import errno, os, platform, socket
def attempt(what, action):
    try:
        action()
        return "%s allowed" % what
    except OSError as exc:
        return "%s refused (%s)" % (what, errno.errorcode.get(exc.errno, exc.errno))
def fill_tmp():
    with open("/tmp/probe.bin", "wb") as f:
        for _ in range(300):
            f.write(b"x" * (1 << 20))
print(attempt("write to /usr", lambda: open("/usr/probe", "w")))
print(attempt("write to /etc", lambda: open("/etc/probe", "w")))
print(attempt("300 MiB into a 256 MiB /tmp", fill_tmp))
os.unlink("/tmp/probe.bin")
print("interfaces", sorted(name for _, name in socket.if_nameindex()))
print(attempt("connect to 10.213.0.1:80", lambda: socket.create_connection(("10.213.0.1", 80), 2)))
print("kernel", platform.release(), "uid", os.getuid())
print("seccomp", open("/proc/self/status").read().split("Seccomp:")[1].split()[0])
'''


def log(text):
    sys.__stderr__.write("[runsc flags] %s\n" % text)
    sys.__stderr__.flush()


def p50(values):
    return statistics.median(values)


def run_engines(*args):
    subprocess.run(["bash", SCRIPT] + list(args), check=True, stdout=subprocess.DEVNULL)


class Study:
    def __init__(self, args):
        self.args = args
        self.scope = "rsflags-%s" % uuid.uuid4().hex[:8]
        self.instances = {key: [] for key, _, _ in VARIANTS}
        self.first = {key: [] for key, _, _ in VARIANTS}
        self.warm = {key: [] for key, _, _ in VARIANTS}
        self.probe = {}
        self.broken = {}  # variant -> why a cell could not run under it
        self.flags_now = None

    # --- the private engine and its runsc -------------------------------------------
    def use_flags(self, flags):
        """Register runsc with BASE_ARGS + flags on the private engine; reload it."""
        wanted = BASE_ARGS + flags
        if wanted == self.flags_now:
            return
        config = {"runtimes": {"runsc": {"path": RUNSC, "runtimeArgs": wanted}}}
        with open(os.path.join(ENGINE_DIR, "daemon.json"), "w") as f:
            json.dump(config, f)
        with open(PIDFILE) as f:
            os.kill(int(f.read()), signal.SIGHUP)  # dockerd reloads its runtimes
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            runtime = (self.docker.info().get("Runtimes") or {}).get("runsc") or {}
            if runtime.get("runtimeArgs") == wanted:
                self.flags_now = wanted
                return
            time.sleep(0.05)
        raise RuntimeError("the private engine did not take runsc %s" % " ".join(wanted))

    # --- the magic ----------------------------------------------------------------
    def start_shell(self):
        os.environ["DOCKER_HOST"] = HOST
        import docker
        from IPython.testing.globalipapp import start_ipython
        self.docker = docker.DockerClient(base_url=HOST, timeout=120)
        self.use_flags([])  # registered before the magic asks (once) which runtimes there are
        self.shell = start_ipython()
        self.shell.run_line_magic("load_ext", "fiddledock_magic")
        self.config("scope", self.scope)
        self.config("pool_size", 0)

    def config(self, key, value):
        self.shell.run_line_magic("config", "DockerRun.%s = %r" % (key, value))

    def cell(self, name, code, expect=None):
        """(seconds, stdout) of one %%dockerrun cell, its output kept out of the way."""
        out, err = io.StringIO(), io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            self.shell.run_cell_magic("dockerrun", name, code)
        elapsed = time.perf_counter() - started
        if expect is not None and out.getvalue() != expect:
            raise RuntimeError("cell in %s printed %r (stderr %r)"
                               % (name, out.getvalue()[:200], err.getvalue()[-300:]))
        return elapsed, out.getvalue()

    def instance_name(self, key, i):
        return "v%d_%d" % ([k for k, _, _ in VARIANTS].index(key), i)

    def select(self, runtime, flags):
        if runtime == "runsc":
            self.use_flags(flags)
        self.config("runtime", runtime)

    # --- the rounds -----------------------------------------------------------------
    def first_cells(self, count):
        for i in range(count):
            for key, runtime, flags in self.rotated(i):
                self.select(runtime, flags)
                name = self.instance_name(key, i)
                try:
                    self.first[key].append(self.cell(name, "print('hi')", expect="hi\n")[0])
                except Exception as exc:  # a flag FiddleDock cannot run under: said, not measured
                    self.broken[key] = "%s: %s" % (type(exc).__name__, str(exc).split("\n")[0])
                    log("%s does not run a cell: %s" % (key, self.broken[key]))
                    continue
                self.instances[key].append(name)
            log("first cells: round %d of %d done" % (i + 1, count))

    def working(self):
        return [v for v in VARIANTS if v[0] not in self.broken]

    def rotated(self, turn):
        """The working variants, starting at a different one each turn (no fixed neighbours)."""
        variants = self.working()
        turn %= len(variants)
        return variants[turn:] + variants[:turn]

    def warm_cells(self, rounds, per):
        for key, _, _ in self.working():  # a few unmeasured cells first
            for _ in range(3):
                self.cell(self.instance_name(key, 0), "print('hi')", expect="hi\n")
        for r in range(rounds):  # one cell per variant in turn: a burst of load hits them all
            for j in range(per):
                for key, _, _ in self.rotated(r * per + j):
                    name = self.instance_name(key, 0)
                    self.warm[key].append(self.cell(name, "print('hi')", expect="hi\n")[0])
            log("warm cells: round %d of %d done" % (r + 1, rounds))

    def safety_probes(self):
        """The probe in a fresh instance of each variant (kept apart from the memory figures)."""
        for key, runtime, flags in self.working():
            self.select(runtime, flags)
            name = self.instance_name(key, 99)
            self.probe[key] = self.cell(name, PROBE)[1]
            self.shell.run_line_magic("dockerrun", "delete %s" % name)

    # --- memory ---------------------------------------------------------------------
    def container_id(self, name):
        from fiddledock_magic._extension import manager_of
        return manager_of(self.shell).instances[name].container_id

    def memory(self, cid):
        stats = self.docker.api.stats(cid, stream=False, one_shot=True).get("memory_stats") or {}
        usage = stats.get("usage") or 0
        inactive = (stats.get("stats") or {}).get("total_inactive_file", 0)
        fields = {}
        try:
            with open(os.path.join(CGROUP, cid, "memory.stat")) as f:
                for line in f:
                    k, v = line.split()
                    fields[k] = int(v)
            with open(os.path.join(CGROUP, cid, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:  # not cgroup v1 with Docker's parent: no split, no PSS
            pids = []
        pss = {"Pss": 0, "Pss_Anon": 0, "Pss_File": 0, "Pss_Shmem": 0}
        for pid in pids:
            try:
                with open("/proc/%d/smaps_rollup" % pid) as f:
                    for line in f:
                        k = line.split(":")[0]
                        if k in pss:
                            pss[k] += int(line.split()[1]) * 1024
            except OSError:
                pass  # gone meanwhile
        return {
            "used": (usage - inactive if inactive < usage else usage) / MIB,
            "anon": fields.get("total_rss", 0) / MIB,
            "shmem": fields.get("total_shmem", 0) / MIB,
            "file": (fields.get("total_cache", 0) - fields.get("total_shmem", 0)) / MIB,
            "pss": pss["Pss"] / MIB, "pss_anon": pss["Pss_Anon"] / MIB,
            "pss_file": pss["Pss_File"] / MIB, "pss_shmem": pss["Pss_Shmem"] / MIB,
            "processes": len(pids),
        }

    def idle_memory(self):
        time.sleep(2)  # idle: let the cells' allocations settle
        result = {}
        for key, _, _ in self.working():
            samples = [self.memory(self.container_id(n)) for n in self.instances[key]]
            result[key] = {k: round(p50([s[k] for s in samples]), 2) for k in samples[0]}
            result[key]["used_max"] = round(max(s["used"] for s in samples), 2)
        return result

    # --- the whole study ----------------------------------------------------------------
    def run(self):
        count = self.args.instances or (2 if self.args.quick else 4)
        rounds, per = (2, 10) if self.args.quick else (4, 20)
        started = time.time()
        log("private engine %s-1: starting" % ENGINE)
        run_engines("stop", ENGINE)  # what an interrupted run may have left
        run_engines("start", ENGINE, "1")
        try:
            self.start_shell()
            log("%d variants x %d new instances (first cell each)" % (len(VARIANTS), count))
            self.first_cells(count)
            log("warm cells: %d rounds x %d per variant" % (rounds, per))
            self.warm_cells(rounds, per)
            memory = self.idle_memory()
            log("safety probe in each variant")
            self.safety_probes()
            self.config("runtime", "runc")
        finally:
            try:
                from fiddledock_magic._extension import manager_of
                manager_of(self.shell).close()
            except Exception as exc:  # the engine's stop removes what is left
                log("closing the manager: %s" % exc)
            run_engines("stop", ENGINE)
            log("private engine stopped")
        return self.result(memory, started)

    def result(self, memory, started):
        ref = {"first": p50(self.first["runsc"]), "warm": p50(self.warm["runsc"]),
               "used": memory["runsc"]["used"], "pss": memory["runsc"]["pss"]}
        variants = []
        for key, runtime, flags in self.working():
            first, warm, mem = p50(self.first[key]), p50(self.warm[key]), memory[key]
            variants.append({
                "variant": key, "runtime": runtime,
                "runtime_args": None if flags is None else BASE_ARGS + flags,
                "idle_mib_median": mem["used"], "idle_mib_max": mem["used_max"],
                "host_pss_mib_median": mem["pss"],
                "warm_p50_ms": round(warm * 1e3, 2), "first_p50_ms": round(first * 1e3, 1),
                "idle_vs_runsc": round(mem["used"] / ref["used"], 3),
                "pss_vs_runsc": round(mem["pss"] / ref["pss"], 3) if ref["pss"] else None,
                "warm_vs_runsc": round(warm / ref["warm"], 3),
                "first_vs_runsc": round(first / ref["first"], 3),
                "memory_split_mib": {k: mem[k] for k in ("anon", "shmem", "file", "pss_anon",
                                                         "pss_file", "pss_shmem", "processes")},
                "instances": len(self.first[key]), "warm_cells": len(self.warm[key]),
                "probe_same_as_runsc": (None if runtime == "runc"  # another kernel: not comparable
                                        else self.probe[key] == self.probe["runsc"]),
            })
        return {"when": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                "seconds": round(time.time() - started, 1),
                "command": " ".join(["bench/runsc_flags.py"] + sys.argv[1:]),
                "runsc_version": subprocess.run([RUNSC, "--version"], stdout=subprocess.PIPE,
                                                universal_newlines=True).stdout.split("\n")[0],
                "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "variants": variants, "broken": self.broken, "probe_runsc": self.probe["runsc"],
                "probe_runc": self.probe["runc"],
                "probes_differing": {v["variant"]: self.probe[v["variant"]] for v in variants
                                     if v["probe_same_as_runsc"] is False}}


def render(result):
    head = ("variant", "idle MiB", "x", "host PSS MiB", "x", "warm p50 ms", "x",
            "first p50 ms", "x", "anon/shmem/file MiB", "probe")
    rows = []
    for v in result["variants"]:
        split = v["memory_split_mib"]
        rows.append((v["variant"], "%.1f" % v["idle_mib_median"], "%.2f" % v["idle_vs_runsc"],
                     "%.1f" % v["host_pss_mib_median"], "%.2f" % (v["pss_vs_runsc"] or 0),
                     "%.2f" % v["warm_p50_ms"], "%.2f" % v["warm_vs_runsc"],
                     "%.0f" % v["first_p50_ms"], "%.2f" % v["first_vs_runsc"],
                     "%.1f/%.1f/%.1f" % (split["anon"], split["shmem"], split["file"]),
                     {None: "-", True: "same", False: "DIFFERS"}[v["probe_same_as_runsc"]]))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
             for r in [head] + rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append("")
    lines.append("x: ratio to plain runsc (%s, --network=none). %s, load at the end %s, %.0f s."
                 % (result["runsc_version"], result["when"], result["loadavg_end"][0],
                    result["seconds"]))
    for key, why in result["broken"].items():
        lines.append("%s: FiddleDock does not run under it (%s)" % (key, why))
    for key, text in result["probes_differing"].items():
        lines.append("probe differs under %s:\n%s" % (key, text))
    return "\n".join(lines)


def section(bench):
    """bench/run.py's section `runsc_flags`: this file run as a child (own engine, own shell)."""
    def section_runsc_flags():
        name = "runsc flags study"
        if os.getuid() != 0 or not os.path.exists(RUNSC):
            bench.not_available(name, "needs root and %s (a private engine of its own)" % RUNSC)
            return
        out = os.path.join(HERE, "results", "runsc_flags.json")
        argv = [sys.executable, os.path.abspath(__file__), "--out", out]
        if subprocess.run(argv + (["--quick"] if bench.args.quick else []),
                          stdout=sys.__stderr__).returncode != 0:
            bench.targets.append({"target": name, "ratio": None, "limit": None, "kind": None,
                                  "met": False, "how": "failed: see its log above"})
            return
        with open(out) as f:
            result = json.load(f)
        bench.metrics["runsc_flags"] = result
        for v in result["variants"][2:]:  # the flags, next to plain runsc
            bench.target("runsc flags: %s saves >= 5%% idle memory" % v["variant"],
                         v["idle_vs_runsc"], 0.95, "max",
                         "%.1f MiB idle, %.1f MiB host PSS; warm %.2fx, first cell %.2fx"
                         % (v["idle_mib_median"], v["host_pss_mib_median"], v["warm_vs_runsc"],
                            v["first_vs_runsc"]), info=True)
        for key, why in result["broken"].items():
            bench.targets.append({"target": "runsc flags: %s" % key, "ratio": None, "limit": None,
                                  "kind": None, "met": None, "how": "not available: %s" % why})
    return section_runsc_flags


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer instances and cells")
    parser.add_argument("--variants", nargs="+", metavar="VARIANT",
                        help="only these (runc and runsc are always measured): %s"
                        % ", ".join(key for key, _, _ in VARIANTS[2:]))
    parser.add_argument("--instances", type=int, help="new instances per variant (default 4; 2 --quick)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "runsc_flags.json"))
    args = parser.parse_args(argv)
    if os.getuid() != 0:
        parser.error("needs root (a private engine in a network namespace of its own)")
    unknown = set(args.variants or []) - set(key for key, _, _ in VARIANTS)
    if unknown:
        parser.error("unknown variant(s): %s" % ", ".join(sorted(unknown)))
    if args.variants:
        VARIANTS[2:] = [v for v in VARIANTS[2:] if v[0] in args.variants]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the engine is stopped on the way out
    result = Study(args).run()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    sys.stdout.write(render(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
