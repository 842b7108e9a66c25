"""Load: N kernels x M instances x K cells, every line of output accounted for.

    .venv/bin/python bench/load.py                      # 4 kernels x 5 instances x 200 cells
    .venv/bin/python bench/load.py -n 2 -m 2 -k 20      # a quick look
    .venv/bin/python bench/load.py --shared 30          # also: two kernels on one instance

Each kernel is a real ipykernel (jupyter_client) with the extension loaded and
a notebook of its own (``JPY_SESSION_NAME``), so it has M instances of its own;
the kernels run their cells at the same time, each in a thread. Cell k of a
kernel runs in instance k mod M and prints numbered lines carrying a token:
the instance's own id (a variable the instance's first cell set, so a cell run
in the wrong container shows it) and the cell number, through ``print`` and
straight into fd 1 (``os.write``, the path of child processes' output), plus
one line on stderr. Every stream message of each kernel's iopub channel is
kept, and the checker counts:

- lost: a line the cell printed that never arrived;
- duplicated: a line that arrived more than once;
- misordered: a line that arrived before a line printed earlier in its cell;
- misrouted: a line under another cell, another kernel or another stream, or
  from another instance than the cell was sent to;
- failed: cells whose reply was not ``ok``.

Latency per cell is taken at the client: execute request to the reply with
iopub idle. ``--shared`` adds the case of two kernels of one notebook using
one instance: kernel A runs cells whose source holds a 4 MiB string literal,
kernel B prints in the same instance (a "busy" refusal is the documented
answer while A's cell runs) and runs ``%dockerrun list`` every tenth time.

Every container carries a scope ``load-<run id>-...`` and is removed at the end.
"""

import argparse
import collections
import os
import queue
import re
import sys
import threading
import time
import uuid

from run import pct  # nearest rank, as in the benchmark's other figures

TOKEN = re.compile(r"^([TE]) (\S+) (\d+) (-?\d+)$")
STDERR_LINE = -1  # the line number of a cell's stderr token
BIG = 4 * 1024 * 1024


def latency_summary(seconds):
    if not seconds:
        return {"n": 0}
    return {"n": len(seconds), "p50_ms": round(pct(seconds, 50) * 1e3, 1),
            "p95_ms": round(pct(seconds, 95) * 1e3, 1),
            "p99_ms": round(pct(seconds, 99) * 1e3, 1),
            "max_ms": round(max(seconds) * 1e3, 1)}


class LoadKernel:
    """A real ipykernel of its own notebook; keeps every iopub message it sees."""

    def __init__(self, scope):
        from jupyter_client.manager import start_new_kernel
        env = dict(os.environ)
        env["JPY_SESSION_NAME"] = scope
        self.scope = scope
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env, startup_timeout=120)
        self.iopub = []  # (msg_id of the parent, msg_type, content) in arrival order
        reply = self.execute("%load_ext fiddledock_magic")[0]
        if reply["status"] != "ok":
            raise RuntimeError("the extension did not load: %s" % reply)

    def execute(self, code, timeout=300):
        """(reply content, seconds from request to reply and iopub idle, msg_id)."""
        kc = self.kc
        start = time.perf_counter()
        msg_id = kc.execute(code, store_history=False)
        reply, idle = None, False
        deadline = time.monotonic() + timeout
        while reply is None or not idle:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the kernel did not finish %r" % code[:60])
            if not idle:
                try:
                    msg = kc.get_iopub_msg(timeout=left)
                except queue.Empty:
                    continue
                parent = msg["parent_header"].get("msg_id")
                self.iopub.append((parent, msg["msg_type"], msg["content"]))
                if (parent == msg_id and msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"):
                    idle = True
            else:
                try:
                    msg = kc.get_shell_msg(timeout=left)
                except queue.Empty:
                    continue
                if msg["parent_header"].get("msg_id") == msg_id:
                    reply = msg["content"]
        return reply, time.perf_counter() - start, msg_id

    def messages_of(self, msg_id, msg_type):
        return [content for parent, kind, content in self.iopub
                if parent == msg_id and kind == msg_type]

    def shutdown(self):
        try:
            self.execute("%dockerrun delete --all", timeout=120)
        except Exception:
            pass  # the scope's containers are removed by label afterwards
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)
        except Exception:
            pass


# --- the cells and what they must print ------------------------------------------------------

def instance_id(kernel, instance):
    return "k%d.i%d" % (kernel, instance)


def token_cell(kernel, k, instances, lines):
    """Cell k of a kernel: `lines` numbered stdout lines and one stderr line."""
    instance = k % instances
    first = "ME = %r\n" % instance_id(kernel, instance) if k < instances else ""
    return ("%%%%dockerrun i%d\n%s"
            "import os, sys\n"
            "for n in range(%d):\n"
            "    if n %% 4 == 3:\n"  # straight into fd 1, as a child process writes
            "        os.write(1, ('T %%s %d %%d\\n' %% (ME, n)).encode())\n"
            "    else:\n"  # flushed before an fd write, else left to coalesce
            "        print('T', ME, %d, n, flush=n %% 4 == 2)\n"
            "print('E', ME, %d, -1, file=sys.stderr)\n"
            % (instance, first, lines, k, k, k))


def check_kernel(kernel, cells, instances, lines, load_kernel):
    """Counts for one kernel's iopub stream; ``cells`` maps msg_id -> cell number."""
    counts = collections.Counter()
    seen = collections.Counter()
    last = {}  # (cell, stream) -> the last line number that arrived
    for msg_id, k in cells.items():
        for stream in ("stdout", "stderr"):
            text = "".join(c["text"] for c in load_kernel.messages_of(msg_id, "stream")
                           if c["name"] == stream)
            for line in text.splitlines():
                match = TOKEN.match(line)
                if not match:
                    continue  # a notice from FiddleDock, say: not the cell's output
                kind, who, cell, n = match.group(1), match.group(2), int(match.group(3)), \
                    int(match.group(4))
                expected = instance_id(kernel, cell % instances)
                if (cell != k or who != expected
                        or (kind == "E") != (stream == "stderr")):
                    counts["misrouted"] += 1
                    continue
                seen[(cell, n)] += 1
                if seen[(cell, n)] > 1:
                    counts["duplicated"] += 1
                    continue
                if n <= last.get((cell, stream), -2):
                    counts["misordered"] += 1
                last[(cell, stream)] = max(n, last.get((cell, stream), -2))
    # Stream output under a msg_id that is none of this run's cells.
    known = set(cells)
    for parent, kind, content in load_kernel.iopub:
        if kind == "stream" and parent not in known and TOKEN.search(content.get("text", "")):
            counts["misrouted"] += 1
    for k in cells.values():
        for n in list(range(lines)) + [STDERR_LINE]:
            if not seen[(k, n)]:
                counts["lost"] += 1
    return counts


def run_kernel(index, load_kernel, instances, cells, lines, result):
    """One kernel's cells in order; fills result (latencies, failures, msg_ids)."""
    result.update(latency=[], warm=[], failed=[], cells={})
    for k in range(cells):
        try:
            reply, seconds, msg_id = load_kernel.execute(token_cell(index, k, instances, lines))
        except Exception as exc:  # the kernel stopped answering: the rest is not run
            result["failed"].append("cell %d and later: %s" % (k, exc))
            return
        result["cells"][msg_id] = k
        result["latency"].append(seconds)
        if k >= instances:
            result["warm"].append(seconds)
        if reply["status"] != "ok":
            result["failed"].append("cell %d: %s: %s" % (k, reply.get("ename"),
                                                         reply.get("evalue")))


def run_load(kernels, instances, cells, lines=8, run_id=None, log=lambda text: None):
    """N kernels x M instances x K cells at once; a dict of counts and latencies."""
    run_id = run_id or uuid.uuid4().hex[:8]
    scopes = ["load-%s-k%d" % (run_id, i) for i in range(kernels)]
    started = []
    try:
        for scope in scopes:
            started.append(LoadKernel(scope))
        log("%d kernels up; running %d cells each on %d instances each"
            % (kernels, cells, instances))
        results = [{} for _ in started]
        threads = [threading.Thread(target=run_kernel, daemon=True,
                                    args=(i, lk, instances, cells, lines, results[i]))
                   for i, lk in enumerate(started)]
        begin = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - begin
        counts = collections.Counter()
        failed = []
        for i, (lk, res) in enumerate(zip(started, results)):
            if "cells" not in res:
                failed.append("kernel %d did not run" % i)
                continue
            counts.update(check_kernel(i, res["cells"], instances, lines, lk))
            failed.extend("kernel %d %s" % (i, f) for f in res["failed"])
        return {
            "kernels": kernels, "instances": instances, "cells": cells, "lines": lines,
            "lost": counts["lost"], "duplicated": counts["duplicated"],
            "misordered": counts["misordered"], "misrouted": counts["misrouted"],
            "failed": failed, "wall_s": round(wall, 2),
            "latency": latency_summary([s for r in results for s in r.get("latency", [])]),
            "warm_latency": latency_summary([s for r in results for s in r.get("warm", [])]),
        }
    finally:
        for lk in started:
            lk.shutdown()
        remove_scopes(scopes)


# --- two kernels of one notebook on one instance --------------------------------------------

def big_cell(n):
    """A cell whose source holds a 4 MiB string literal: 4 MiB cross the channel."""
    return ('%%%%dockerrun shared\nbig = "%s"\nprint(len(big), x, %d)' % ("x" * BIG, n))


def run_shared(a_cells, run_id=None, log=lambda text: None):
    """Kernel A: big cells; kernel B: prints and `%dockerrun list`, same instance.

    Returns a dict: A's failures, whether A's state survived, B's failures
    (a "busy" refusal is not one), B's cell and list counts, A's latencies.
    """
    run_id = run_id or uuid.uuid4().hex[:8]
    scope = "load-%s-shared" % run_id
    a = b = None
    try:
        a, b = LoadKernel(scope), LoadKernel(scope)
        reply = a.execute("%%dockerrun shared\nx = 'A-state'")[0]
        if reply["status"] != "ok":
            raise RuntimeError("the shared instance did not start: %s" % reply)
        result = {"a_failed": [], "b_failed": [], "b_cells": 0, "b_busy": 0, "b_lists": 0,
                  "a_latency": []}
        done = threading.Event()

        def kernel_b():
            j = 0
            while not done.is_set():
                j += 1
                if j % 10 == 0:
                    reply = b.execute("%dockerrun list")[0]
                    result["b_lists"] += 1
                    if reply["status"] != "ok":
                        result["b_failed"].append("list %d: %s: %s" % (
                            j, reply.get("ename"), reply.get("evalue")))
                    continue
                reply, _, msg_id = b.execute("%%%%dockerrun shared\nprint('B', %d)" % j)
                result["b_cells"] += 1
                out = "".join(c["text"] for c in b.messages_of(msg_id, "stream")
                              if c["name"] == "stdout")
                if reply["status"] == "ok" and out == "B %d\n" % j:
                    continue
                if reply.get("ename") == "InstanceBusy":
                    result["b_busy"] += 1
                    continue
                result["b_failed"].append("cell %d: %s: %s; stdout %r" % (
                    j, reply.get("ename"), reply.get("evalue"), out[:200]))

        thread = threading.Thread(target=kernel_b, daemon=True)
        thread.start()
        for n in range(a_cells):
            reply, seconds, msg_id = a.execute(big_cell(n))
            result["a_latency"].append(seconds)
            out = "".join(c["text"] for c in a.messages_of(msg_id, "stream")
                          if c["name"] == "stdout")
            if reply["status"] != "ok" or out != "%d A-state %d\n" % (BIG, n):
                result["a_failed"].append("cell %d: %s: %s; stdout %r" % (
                    n, reply.get("ename"), reply.get("evalue"), out[:200]))
        done.set()
        thread.join(120)
        reply, _, msg_id = a.execute("%%dockerrun shared\nprint(x)")
        out = "".join(c["text"] for c in a.messages_of(msg_id, "stream") if c["name"] == "stdout")
        result["a_state_kept"] = reply["status"] == "ok" and out == "A-state\n"
        result["a_latency"] = latency_summary(result["a_latency"])
        return result
    finally:
        for lk in (a, b):
            if lk is not None:
                lk.shutdown()
        remove_scopes([scope])


def remove_scopes(scopes):
    """Remove every container of these notebooks (by their scope label)."""
    import docker
    from fiddledock_magic._spec import scope_id
    client = docker.from_env()
    for scope in scopes:
        for c in client.containers.list(
                all=True, filters={"label": "fiddledock.scope=%s" % scope_id(scope)}):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--kernels", type=int, default=4)
    parser.add_argument("-m", "--instances", type=int, default=5)
    parser.add_argument("-k", "--cells", type=int, default=200)
    parser.add_argument("--lines", type=int, default=8, help="stdout lines per cell")
    parser.add_argument("--shared", type=int, default=0, metavar="CELLS",
                        help="also run two kernels on one instance, A running CELLS 4 MiB cells")
    args = parser.parse_args(argv)

    def log(text):
        sys.stderr.write("[load] %s\n" % text)

    log("load average %.1f" % os.getloadavg()[0])
    res = run_load(args.kernels, args.instances, args.cells, args.lines, log=log)
    print("%d kernels x %d instances x %d cells (%d lines each), %.1f s"
          % (res["kernels"], res["instances"], res["cells"], res["lines"], res["wall_s"]))
    print("lost %d, duplicated %d, misordered %d, misrouted %d, failed cells %d"
          % (res["lost"], res["duplicated"], res["misordered"], res["misrouted"],
             len(res["failed"])))
    for key, label in (("latency", "every cell"), ("warm_latency", "warm cells")):
        lat = res[key]
        if lat["n"]:
            print("latency, %s (n=%d): p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, max %.1f ms"
                  % (label, lat["n"], lat["p50_ms"], lat["p95_ms"], lat["p99_ms"], lat["max_ms"]))
    for line in res["failed"][:10]:
        print("  failed: " + line)
    bad = res["lost"] + res["duplicated"] + res["misordered"] + res["misrouted"] + len(res["failed"])
    if args.shared:
        shared = run_shared(args.shared, log=log)
        lat = shared["a_latency"]
        print("two kernels on one instance: A ran %d cells of 4 MiB (p50 %.1f ms, p99 %.1f ms), "
              "%d failed, state kept: %s; B ran %d cells (%d refused as busy) and %d lists, "
              "%d failed" % (args.shared, lat["p50_ms"], lat["p99_ms"], len(shared["a_failed"]),
                             shared["a_state_kept"], shared["b_cells"], shared["b_busy"],
                             shared["b_lists"], len(shared["b_failed"])))
        for line in (shared["a_failed"] + shared["b_failed"])[:10]:
            print("  failed: " + line)
        bad += len(shared["a_failed"]) + len(shared["b_failed"]) + (not shared["a_state_kept"])
    log("load average %.1f" % os.getloadavg()[0])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
