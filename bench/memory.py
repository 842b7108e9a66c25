"""Idle memory per instance, and where it goes (the `memory` section of bench/run.py).

    .venv/bin/python bench/run.py --only memory        # 20 instances (5 with --quick)
    .venv/bin/python bench/memory.py --instances 100   # this section alone, with N instances

N instances are created one after another through the magic (runc), each
runs one `print('hi')` cell and stays connected to this shell (its relay
waits, as with a notebook); after a pause to settle, every container's
memory is read as `docker stats` shows it (usage - total_inactive_file, as
the scale section reads it). Where it goes is read on the host (root): each
process of the container's memory cgroup (`cgroup.procs`) and its
`/proc/PID/smaps_rollup`, by role: docker-init, supervisor (the agent's main
process, root), worker (runs the cells, uid 1000, forked from the supervisor)
and relay (one per connected client: `sleep` once it has handed its streams
over). Pss counts a page shared by k processes 1/k to each (the roles' Pss add
up to what the processes map); private is what only that process maps. The
cgroup (v1) also charges kernel memory (`memory.kmem.usage_in_bytes`: page
tables, sockets, process structures), which no process's Pss shows.
Then each instance runs a failing cell and one whose value is a dict, and
the memory is read again (info): the worker imports the modules for
tracebacks and pretty printing only when a cell first needs them.
"""

import argparse
import concurrent.futures
import os
import statistics
import sys
import time

import run

ROLES = ("docker-init", "supervisor", "worker", "relay", "other")
# What most teaching sessions soon reach, read again after the first figure:
# a failing cell (the traceback's modules) and a container shown as a value (pprint).
SESSION = (("--no-raise", "1/0"), ("", "{'a': 1, 'b': [1, 2]}"))
SETTLE = 3.0  # seconds idle before reading: the last cell's allocations are done
TARGET_MIB = 12.0
STRETCH_MIB = 10.0


def smaps_rollup(pid):
    """{field: kB} of /proc/PID/smaps_rollup; {} if it cannot be read."""
    fields = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1])
    except OSError:
        pass
    return fields


def cgroup_dir(pid):
    """The memory cgroup folder of a host process (cgroup v1 or v2), or None."""
    try:
        with open("/proc/%d/cgroup" % pid) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return "/sys/fs/cgroup/memory" + path
    for line in lines:
        if line.startswith("0::"):
            return "/sys/fs/cgroup" + line[3:]
    return None


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def role_of(pid, init_pid):
    """Which part of the instance a process is, from its command line, uid and parent."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        with open("/proc/%d/status" % pid) as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return "other"
    program = os.path.basename(argv[0]).decode("utf-8", "replace")
    uid = int(status["Uid"].split()[0])
    parent = int(status["PPid"].split()[0])
    if pid == init_pid and program == "docker-init":
        return "docker-init"
    if program == "sleep" or b"-I" in argv:
        return "relay"  # a relay that has not become `sleep` yet is `python3 -I -S -c`
    if program.startswith("python") and uid == 0 and parent in (init_pid, 0):
        return "supervisor"
    if program.startswith("python") and uid != 0:
        return "worker"
    return "other"


def container_breakdown(docker_api, container_id):
    """One container: its `docker stats` memory and each role's Pss and private kB."""
    stats = docker_api.stats(container_id, stream=False, one_shot=True)
    mem = stats.get("memory_stats") or {}
    usage = mem.get("usage") or 0
    detail = mem.get("stats") or {}
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    init_pid = docker_api.inspect_container(container_id)["State"]["Pid"]
    folder = cgroup_dir(init_pid)
    roles = {role: {"pss_kib": 0, "private_kib": 0, "processes": 0} for role in ROLES}
    procs = []
    if folder is not None:
        try:
            with open(os.path.join(folder, "cgroup.procs")) as f:
                procs = [int(p) for p in f.read().split()]
        except OSError:
            pass
    for pid in procs:
        rollup = smaps_rollup(pid)
        role = roles[role_of(pid, init_pid)]
        role["pss_kib"] += rollup.get("Pss", 0)
        role["private_kib"] += rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
        role["processes"] += 1
    kmem = read_int(os.path.join(folder, "memory.kmem.usage_in_bytes")) if folder else None
    return {
        "mib": (usage - inactive if inactive < usage else usage) / run.MIB,
        "anon_mib": detail.get("total_rss", detail.get("anon", 0)) / run.MIB,
        "kernel_mib": None if kmem is None else kmem / run.MIB,
        "roles": roles,
        "processes_read": sum(1 for pid in procs if smaps_rollup(pid)),
    }


def measure(bench, count):
    """``count`` new instances, one cell each, then their idle memory (a metrics dict)."""
    bench.config("runtime", "runc")
    names = ["mem%03d" % i for i in range(count)]
    started = time.perf_counter()
    try:
        for name in names:
            bench.cell(name, "print('hi')", expect="hi\n")
        time.sleep(SETTLE)
        ids = [bench.container_of(name) for name in names]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            rows = list(pool.map(lambda cid: container_breakdown(bench.docker.api, cid), ids))
        for name in names:
            for options, code in SESSION:
                bench.cell(("%s %s" % (name, options)).strip(), code)
        time.sleep(SETTLE)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            later = list(pool.map(lambda cid: container_breakdown(bench.docker.api, cid), ids))
    finally:
        bench.delete_instances(names)
    used = [row["mib"] for row in rows]
    result = {
        "instances": count, "seconds_total": round(time.perf_counter() - started, 1),
        "mib_median": round(statistics.median(used), 2), "mib_max": round(max(used), 2),
        "anon_mib_median": round(statistics.median(row["anon_mib"] for row in rows), 2),
        "after_session_mib_median": round(statistics.median(row["mib"] for row in later), 2),
        "after_session_mib_max": round(max(row["mib"] for row in later), 2),
        "session": [code for _, code in SESSION],
        "mem_source": "docker stats: usage - total_inactive_file, after %.0f s idle" % SETTLE,
        "roles": {},
    }
    kernel = [row["kernel_mib"] for row in rows if row["kernel_mib"] is not None]
    result["kernel_mib_median"] = round(statistics.median(kernel), 2) if kernel else None
    if all(row["processes_read"] for row in rows):
        for role in ROLES:
            found = [row["roles"][role] for row in rows if row["roles"][role]["processes"]]
            if found:
                result["roles"][role] = {
                    "pss_mib": round(statistics.median(r["pss_kib"] for r in found) / 1024, 2),
                    "private_mib": round(statistics.median(r["private_kib"] for r in found) / 1024, 2),
                    "processes": max(r["processes"] for r in found),
                }
    run.log("memory: %d instances, idle median %.2f MiB, max %.2f MiB; %s; after an error "
            "and a dict value: median %.2f MiB" % (count, result["mib_median"], result["mib_max"],
                                                 roles_text(result),
                                                 result["after_session_mib_median"]))
    return result


def roles_text(result):
    """Each role's median Pss (private) in MiB, in a few words."""
    if not result["roles"]:
        return "per process: not available (the host's /proc of the container is not readable)"
    parts = ["%s %.2f (%.2f)" % (role, r["pss_mib"], r["private_mib"])
             for role, r in result["roles"].items()]
    kernel = result["kernel_mib_median"]
    if kernel is not None:
        parts.append("kernel memory %.2f" % kernel)
    return "Pss (private) MiB: " + ", ".join(parts)


def section(bench):
    """The section as bench/run.py calls it (``--only memory``)."""

    def section_memory():
        count = getattr(bench.args, "instances", None) or (5 if bench.args.quick else 20)
        run.log("memory: %d idle instances under runc" % count)
        result = measure(bench, count)
        bench.metrics["memory_runc"] = result
        bench.target("idle memory per instance (runc) median <= %g MiB" % TARGET_MIB,
                     result["mib_median"], TARGET_MIB, "max",
                     "%d instances, max %.2f MiB; %s" % (count, result["mib_max"],
                                                         roles_text(result)), unit="MiB")
        bench.target("idle memory per instance (runc) median <= %g MiB (stretch)" % STRETCH_MIB,
                     result["mib_median"], STRETCH_MIB, "max",
                     "median of %d; anonymous memory (memory.stat rss) %.2f MiB"
                     % (count, result["anon_mib_median"]), unit="MiB", info=True)
        bench.target("idle memory per instance (runc) after an error and a dict value <= %g MiB"
                     % TARGET_MIB, result["after_session_mib_median"], TARGET_MIB, "max",
                     "median of %d, max %.2f MiB; cells %s after the first"
                     % (count, result["after_session_mib_max"], " and ".join(result["session"])),
                     unit="MiB", info=True)

    return section_memory


def breakdown_table(result):
    rows = [(role, "%.2f" % r["pss_mib"], "%.2f" % r["private_mib"], r["processes"])
            for role, r in result["roles"].items()]
    if result["kernel_mib_median"] is not None:
        rows.append(("kernel memory (cgroup kmem)", "%.2f" % result["kernel_mib_median"], "", ""))
    rows.append(("instance (docker stats)", "%.2f" % result["mib_median"],
                 "max %.2f" % result["mib_max"], ""))
    rows.append(("... after an error and a dict value", "%.2f" % result["after_session_mib_median"],
                 "max %.2f" % result["after_session_mib_max"], ""))
    return run.table(rows, ("per instance, median", "Pss MiB", "private MiB", "processes"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", "-n", type=int, default=20, help="how many (default 20)")
    args = parser.parse_args(argv)
    bench = run.Bench(argparse.Namespace(quick=False, no_gvisor=True, profile=False,
                                         only=["memory"], instances=args.instances))
    try:
        bench.start_shell()
        section(bench)()
    finally:
        bench.cleanup()
    result = bench.metrics["memory_runc"]
    trows = [(t["target"], "%.2f MiB" % t["ratio"], "met" if t["met"] else "MISSED", t["how"])
             for t in bench.targets]
    run.OUT.write("%s\n\n%s\n" % (breakdown_table(result),
                                  run.table(trows, ("target", "measured", "verdict", "detail"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
