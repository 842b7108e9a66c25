"""A class in one kernel: N instances (100 by default) from one in-process IPython shell.

    .venv/bin/python bench/run.py --only crowd        # N = 100 (20 with --quick), a few minutes
    FIDDLEDOCK_CROWD=30 .venv/bin/python bench/run.py --only crowd
    .venv/bin/python bench/crowd.py --instances 30    # this section alone

Side by side, in one run:

- the kernel's own cost (RSS, threads, descriptors by kind from /proc/self/fd)
  with 1 instance and with N, and per instance: (at N - at 1) / (N - 1);
- `%dockerrun list` at N (first in the run, and again) against one
  `docker ps -a` (the CLI) plus one stats sample of the N containers taken in
  parallel (docker-py, one thread per container so all are in flight at once,
  ``stream=False, one_shot=True``: one reading each, the engine's cheapest);
  `docker stats --no-stream` of the N is shown too (two readings, as its CPU
  column needs);
- warm cell p50/p95 round robin across the N instances against the same cell
  in one instance (interleaved rounds);
- warm cell p50/p95 with the panel open (a real ``PanelModel`` and its
  ipywidgets view with N rows, live refresh at its default period) against
  no panel view at all (interleaved blocks of the same length; in process the
  widgets' comms send nothing, so this counts the kernel's work up to the send);
  then the same through a real ipykernel of the same scope (the same N rows),
  whose widget messages really go out on iopub.

Every instance is created with `%dockerrun create a b c ...` (in parallel),
runs a cell that prints its own name (checked), and is removed at the end,
also on Ctrl-C (the benchmark's cleanup removes its scope).
"""

import concurrent.futures
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import BenchError, log, pct, summary, table  # noqa: E402

PANEL_BLOCK = 15.0  # s of cells per block, with and without the panel
# The engine samples stats in rounds a second apart; a request that comes while it
# is idle is served at once. Each timed list and baseline starts with it idle, as a
# person's `%dockerrun list` does (not phase-locked to the previous one's round).
ENGINE_IDLE = 1.5
PANEL_BLOCKS = 3    # blocks of each
LIST_REPEATS = 5


def footprint():
    """The kernel's RSS (KiB), threads and descriptors by kind (socket, pipe, file, ...)."""
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    kinds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/%s" % fd)
        except OSError:
            continue
        kind = "file" if target.startswith("/") else target.split(":")[0].strip("[]")
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"rss_kib": rss, "threads": threading.active_count(),
            "thread_names": sorted(t.name for t in threading.enumerate()), "fds": kinds}


class Crowd:
    """The crowd section on a ``run.Bench`` (its shell, manager, docker client, records)."""

    def __init__(self, bench, count=None):
        self.bench = bench
        default = 20 if bench.args.quick else 100
        self.count = count or int(os.environ.get("FIDDLEDOCK_CROWD") or default)
        self.names = ["crowd%03d" % i for i in range(self.count)]
        self.rows = []

    def section_crowd(self):
        b = self.bench
        if b.shell is None:
            b.start_shell()
        first = self.names[0]
        b.cell(first, "print(%r)" % first, expect="%s\n" % first)
        for _ in range(20):
            b.cell(first, "print('hi')", expect="hi\n")
        at1 = footprint()
        log("crowd: creating %d more instances with %%dockerrun create (parallel)"
            % (self.count - 1))
        t0 = time.perf_counter()
        text = b.line("create " + " ".join(self.names[1:])) if self.count > 1 else ""
        created = time.perf_counter() - t0
        missing = [n for n in self.names if n not in b.manager.instances]
        if missing:
            raise BenchError("create left out %s: %s" % (", ".join(missing[:5]), text[-500:]))
        for name in self.names:  # each runs a cell, its own name checked
            b.cell(name, "import socket; print(socket.gethostname())", expect="%s\n" % name)
        atn = footprint()
        log("crowd: %d instances created in %.1f s, each ran a cell" % (self.count, created))
        self.footprint(at1, atn)
        self.round_robin()
        self.list_time()
        self.panel()
        if self.bench.kernel is not None:
            self.kernel_panel()
        self.bench.notes.append("crowd:\n" + table(self.rows, ("measurement", "value",
                                                               "baseline", "ratio")))
        log("crowd summary:\n" + table(self.rows, ("measurement", "value", "baseline", "ratio")))

    # --- the kernel's cost ---------------------------------------------------------
    def footprint(self, at1, atn):
        n = self.count
        per = lambda a, b: (b - a) / float(max(1, n - 1))  # noqa: E731
        kinds = sorted(set(at1["fds"]) | set(atn["fds"]))
        fds = {k: (at1["fds"].get(k, 0), atn["fds"].get(k, 0)) for k in kinds}
        result = {
            "instances": n, "at_1": at1, "at_n": atn,
            "rss_kib_per_instance": round(per(at1["rss_kib"], atn["rss_kib"]), 1),
            "threads_per_instance": round(per(at1["threads"], atn["threads"]), 3),
            "fds_per_instance": {k: round(per(a, z), 3) for k, (a, z) in fds.items()},
            "connected": sum(1 for i in self.bench.manager.instances.values()
                             if i.connection is not None and not i.connection.closed),
        }
        import resource
        result["fd_soft_limit"], result["fd_hard_limit"] = resource.getrlimit(
            resource.RLIMIT_NOFILE)
        self.bench.metrics["crowd_kernel"] = result
        self.rows.append(("kernel RSS (MiB) at 1 / at %d" % n, "%.1f" % (atn["rss_kib"] / 1024.0),
                          "%.1f" % (at1["rss_kib"] / 1024.0),
                          "%.0f KiB per instance" % result["rss_kib_per_instance"]))
        self.rows.append(("kernel threads at 1 / at %d" % n, atn["threads"], at1["threads"],
                          "%.2f per instance" % result["threads_per_instance"]))
        for kind, (a, z) in fds.items():
            self.rows.append(("kernel fds (%s) at 1 / at %d" % (kind, n), z, a,
                              "%.2f per instance" % result["fds_per_instance"][kind]))
        self.rows.append(("fd soft / hard limit", result["fd_soft_limit"],
                          result["fd_hard_limit"], ""))
        log("crowd kernel: %s" % {k: v for k, v in result.items() if k not in ("at_1", "at_n")})

    # --- warm cells across the crowd ---------------------------------------------------
    def round_robin(self):
        b = self.bench
        rounds = 2 if b.args.quick else 4
        per = max(100, self.count)  # cells per round, each way
        one, many, floor_one, floor_many = [], [], [], []
        conns = [b.manager.instances[n].connection for n in self.names]
        log("crowd: warm cells, %d rounds of %d in one instance and round robin across %d"
            % (rounds, per, self.count))
        cpu_one, cpu_many = [], []  # the kernel's own CPU time per cell (its main thread)
        for _ in range(rounds):
            for _ in range(per):
                c0 = time.thread_time()
                one.append(b.cell(self.names[0], "print('hi')", expect="hi\n")[0])
                cpu_one.append(time.thread_time() - c0)
            for i in range(per):
                c0 = time.thread_time()
                many.append(b.cell(self.names[i % self.count], "print('hi')", expect="hi\n")[0])
                cpu_many.append(time.thread_time() - c0)
            # where a difference comes from: the channel and agent alone, no cell
            for i in range(per):
                floor_one.append(b.hello_round_trip(conns[0]))
                floor_many.append(b.hello_round_trip(conns[i % self.count]))
        a = b.record("crowd_warm_one", "warm cell in 1 instance (crowd rounds)", one)
        z = b.record("crowd_warm_round_robin", "warm cell round robin across %d instances"
                     % self.count, many)
        b.target("warm cell p95 round robin across %d <= 2x p95 in 1" % self.count,
                 z["p95_ms"] / a["p95_ms"], 2.0, "max",
                 "p95 %.2f ms vs %.2f ms (p50 %.2f vs %.2f)"
                 % (z["p95_ms"], a["p95_ms"], z["p50_ms"], a["p50_ms"]))
        self.rows.append(("warm p95 round robin across %d (ms)" % self.count,
                          "%.2f" % z["p95_ms"], "%.2f" % a["p95_ms"],
                          "%.2fx" % (z["p95_ms"] / a["p95_ms"])))
        self.rows.append(("warm p50 round robin across %d (ms)" % self.count,
                          "%.2f" % z["p50_ms"], "%.2f" % a["p50_ms"],
                          "%.2fx" % (z["p50_ms"] / a["p50_ms"])))
        self.rows.append(("kernel CPU per warm cell p50, round robin / 1 (ms)",
                          "%.3f" % (pct(cpu_many, 50) * 1e3), "%.3f" % (pct(cpu_one, 50) * 1e3),
                          "%.2fx" % (pct(cpu_many, 50) / pct(cpu_one, 50))))
        f1 = b.record("crowd_hello_one", "floor: agent hello round trip, 1 instance", floor_one)
        fn = b.record("crowd_hello_round_robin", "floor: agent hello round trip, round robin "
                      "across %d" % self.count, floor_many)
        self.rows.append(("agent hello p50 round robin / 1 (ms)", "%.2f" % fn["p50_ms"],
                          "%.2f" % f1["p50_ms"], "%.2fx" % (fn["p50_ms"] / f1["p50_ms"])))

    # --- %dockerrun list ---------------------------------------------------------------
    def check_list(self, text):
        """Every instance on its own line, ready, with a memory figure."""
        lines = {line.split()[0]: line for line in text.splitlines()
                 if line.startswith("crowd")}
        wrong = [n for n in self.names if n not in lines or " ready " not in lines[n]
                 or " MiB / " not in lines[n]]
        if wrong:
            raise BenchError("list shows %d of %d rows wrong, e.g. %r"
                             % (len(wrong), self.count, lines.get(wrong[0], wrong[0])))

    def baseline(self, ids):
        """docker ps -a, then one stats sample of each container, all in flight at once."""
        api = self.bench.docker.api
        t0 = time.perf_counter()
        self.bench.run_cmd(["docker", "ps", "-a"])
        with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:
            samples = list(pool.map(lambda cid: api.stats(cid, stream=False, one_shot=True),
                                    ids))
        elapsed = time.perf_counter() - t0
        if not all((s.get("memory_stats") or {}).get("usage") for s in samples):
            raise BenchError("a baseline stats sample has no memory figure")
        return elapsed

    def list_time(self):
        b = self.bench
        ids = [b.container_of(n) for n in self.names]
        log("crowd: %%dockerrun list at %d vs docker ps -a + parallel stats" % self.count)
        time.sleep(ENGINE_IDLE)
        t0 = time.perf_counter()
        text = b.line("list")
        cold = time.perf_counter() - t0
        self.check_list(text)
        ours, base, cli = [], [], []
        for _ in range(LIST_REPEATS):
            time.sleep(ENGINE_IDLE)
            base.append(self.baseline(ids))
            time.sleep(ENGINE_IDLE)
            t0 = time.perf_counter()
            text = b.line("list")
            ours.append(time.perf_counter() - t0)
            self.check_list(text)
            time.sleep(ENGINE_IDLE)
            cli.append(b.run_cmd(["docker", "stats", "--no-stream"] + ids))
        cpu = sum(1 for line in text.splitlines() if line.startswith("crowd")
                  and line.rstrip().endswith("%"))
        m = b.record("crowd_list", "%%dockerrun list at %d (again within a minute)"
                     % self.count, ours, first_ms=round(cold * 1e3, 1), rows_with_cpu=cpu)
        k = b.record("crowd_list_baseline", "baseline: docker ps -a + %d one-shot stats in "
                     "parallel" % self.count, base)
        c = b.record("crowd_docker_stats_cli", "info: docker stats --no-stream of %d"
                     % self.count, cli)
        b.target("%%dockerrun list at %d <= 2x docker ps -a + parallel stats" % self.count,
                 m["p50_ms"] / k["p50_ms"], 2.0, "max",
                 "p50 %.0f ms vs %.0f ms; the run's first list %.0f ms (two readings for CPU), "
                 "docker stats --no-stream %.0f ms" % (m["p50_ms"], k["p50_ms"], cold * 1e3,
                                                       c["p50_ms"]))
        self.rows.append(("list at %d, p50 (ms)" % self.count, "%.0f" % m["p50_ms"],
                          "%.0f" % k["p50_ms"], "%.2fx" % (m["p50_ms"] / k["p50_ms"])))
        self.rows.append(("list at %d, first of the run (ms)" % self.count, "%.0f" % (cold * 1e3),
                          "%.0f" % c["p50_ms"], "vs docker stats --no-stream"))

    # --- the panel ---------------------------------------------------------------------
    def panel(self):
        """Warm cells with a panel on screen (its model refreshing N rows live, its view
        drawing them) against no panel view at all; interleaved blocks."""
        b = self.bench
        from fiddledock_magic._panel import panel_for
        from fiddledock_magic._panel_model import model_for
        model = model_for(b.manager, b.shell)
        refreshes, cpu = [], []
        original = model.refresh

        def timed_refresh():  # wall time, and the CPU time of the thread that refreshes
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return original()
            finally:
                refreshes.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
        model.refresh = timed_refresh
        name = self.names[0]
        off, on = [], []
        rows = []
        log("crowd: warm cells with the panel (%d rows, live every %g s) open vs none, "
            "%d blocks of %g s each" % (self.count, model.interval, PANEL_BLOCKS, PANEL_BLOCK))
        try:
            for _ in range(PANEL_BLOCKS):
                self.cells_for(name, PANEL_BLOCK, off)
                view = panel_for(b.manager, b.shell)
                model.wait(30)
                model.refresh()  # its rows drawn before the block starts
                view._view_count = 1  # on screen, as the frontend reports it
                self.cells_for(name, PANEL_BLOCK, on)
                rows.append(len(view.rows))
                view.close()
                model.wait(30)
        finally:
            model.set_visible(None, False)
            model.refresh = original
        if any(n != self.count for n in rows):
            raise BenchError("the panel showed %s rows, not %d" % (rows, self.count))
        a = b.record("crowd_warm_panel_closed", "warm cell, no panel on screen", off)
        z = b.record("crowd_warm_panel_open", "warm cell, panel open with %d rows" % self.count,
                     on, refreshes=len(refreshes),
                     refresh_p50_ms=round(pct(refreshes, 50) * 1e3, 1) if refreshes else None,
                     refresh_cpu_p50_ms=round(pct(cpu, 50) * 1e3, 1) if cpu else None)
        b.target("warm cell with the panel open (%d rows) <= 1.2x without" % self.count,
                 z["p95_ms"] / a["p95_ms"], 1.2, "max",
                 "p95 %.2f vs %.2f ms, p50 %.2f vs %.2f ms; %d refreshes, p50 %.0f ms each "
                 "(%.0f ms of the refreshing thread's CPU)"
                 % (z["p95_ms"], a["p95_ms"], z["p50_ms"], a["p50_ms"], len(refreshes),
                    (pct(refreshes, 50) * 1e3) if refreshes else 0,
                    (pct(cpu, 50) * 1e3) if cpu else 0))
        self.rows.append(("warm p50 panel open / none (ms)", "%.2f" % z["p50_ms"],
                          "%.2f" % a["p50_ms"], "%.2fx" % (z["p50_ms"] / a["p50_ms"])))
        self.rows.append(("warm p95 panel open / none (ms)", "%.2f" % z["p95_ms"],
                          "%.2f" % a["p95_ms"], "%.2fx" % (z["p95_ms"] / a["p95_ms"])))

    def kernel_panel(self):
        """The same through a real ipykernel (same scope, so the same N rows): the
        widgets' comm messages really go out on iopub (drained by the client)."""
        b = self.bench
        k = b.kernel
        name = self.names[0]
        cell = "%%%%dockerrun %s\nprint('hi')" % name
        k.execute(cell)  # the kernel's own channel to the instance
        off, on = [], []
        log("crowd: the same through a real ipykernel, %d blocks of %g s each"
            % (PANEL_BLOCKS, PANEL_BLOCK))
        for _ in range(PANEL_BLOCKS):
            self.kernel_cells_for(cell, PANEL_BLOCK, off)
            k.execute("_crowd_panel = %dockerrun panel\n_crowd_panel.model.refresh()\n"
                      "_crowd_panel._view_count = 1")
            self.kernel_cells_for(cell, PANEL_BLOCK, on)
            _, shown = k.execute("print(len(_crowd_panel.rows), "
                                 "len(_crowd_panel.model.statuses))\n"
                                 "_crowd_panel.close(); _crowd_panel.model.wait()")
            if shown.split() != [str(self.count)] * 2:
                raise BenchError("the kernel's panel showed %r rows, not %d"
                                 % (shown, self.count))
        a = b.record("crowd_kernel_panel_closed", "ipykernel: warm cell, no panel", off)
        z = b.record("crowd_kernel_panel_open", "ipykernel: warm cell, panel open with %d rows"
                     % self.count, on)
        b.target("ipykernel: warm cell with the panel open (%d rows) <= 1.2x without"
                 % self.count, z["p95_ms"] / a["p95_ms"], 1.2, "max",
                 "p95 %.2f vs %.2f ms, p50 %.2f vs %.2f ms"
                 % (z["p95_ms"], a["p95_ms"], z["p50_ms"], a["p50_ms"]))
        self.rows.append(("ipykernel: warm p50 panel open / none (ms)", "%.2f" % z["p50_ms"],
                          "%.2f" % a["p50_ms"], "%.2fx" % (z["p50_ms"] / a["p50_ms"])))
        self.rows.append(("ipykernel: warm p95 panel open / none (ms)", "%.2f" % z["p95_ms"],
                          "%.2f" % a["p95_ms"], "%.2fx" % (z["p95_ms"] / a["p95_ms"])))

    def kernel_cells_for(self, cell, seconds, into):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            elapsed, out = self.bench.kernel.execute(cell)
            if out != "hi\n":
                raise BenchError("the kernel's cell printed %r" % out[:200])
            into.append(elapsed)

    def cells_for(self, name, seconds, into):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            into.append(self.bench.cell(name, "print('hi')", expect="hi\n")[0])


def section(bench):
    """The hook bench/run.py calls for ``--only crowd``: a section named section_crowd."""
    crowd = Crowd(bench)

    def section_crowd():
        try:
            crowd.section_crowd()
        except BenchError as exc:  # as the run's own (run.py runs as __main__)
            raise sys.modules[type(bench).__module__].BenchError(str(exc)) from None
    return section_crowd


def main(argv=None):
    import argparse
    import atexit
    import signal
    import run
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=None, help="N (default 100)")
    parser.add_argument("--quick", action="store_true", help="N = 20 unless --instances")
    args = parser.parse_args(argv)
    bench = run.Bench(argparse.Namespace(quick=args.quick, no_gvisor=True, only=["crowd"],
                                         profile=False))
    atexit.register(bench.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        bench.start_shell()
        log("scope %s; starting a local ipykernel" % bench.scope)
        bench.kernel = run.Kernel({"JPY_SESSION_NAME": bench.scope})
        bench.kernel.execute("%load_ext fiddledock_magic")
        bench.kernel.execute("%%config DockerRun.scope = %r" % bench.scope)
        Crowd(bench, args.instances).section_crowd()
    finally:
        bench.cleanup()
    sys.__stdout__.write(run.render({"metrics": bench.metrics, "targets": bench.targets,
                                     "machine": {"cpus": os.cpu_count(), "loadavg_start": [0],
                                                 "loadavg_end": list(os.getloadavg()),
                                                 "docker_server": "-"},
                                     "when": "-", "seconds": 0}) + "\n")
    for note in bench.notes:
        sys.__stdout__.write(note + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
