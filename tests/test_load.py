"""Many kernels at once: every line of output arrives once, in order, where it belongs.

The harness is bench/load.py (its bigger run is the benchmark's): real
kernels, each its own notebook with instances of its own, running cells at the
same time; every line a cell prints carries a token, and each kernel's iopub
stream is checked for lost, duplicated, misordered and misrouted lines.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import load  # noqa: E402


def test_three_kernels_three_instances_twenty_cells_lose_nothing(docker_client, default_image):
    res = load.run_load(kernels=3, instances=3, cells=20)
    print("latency: %s; warm: %s" % (res["latency"], res["warm_latency"]))
    assert res["failed"] == []
    counts = {key: res[key] for key in ("lost", "duplicated", "misordered", "misrouted")}
    assert counts == {"lost": 0, "duplicated": 0, "misordered": 0, "misrouted": 0}
    assert res["latency"]["n"] == 60


def test_two_kernels_on_one_instance_never_corrupt_each_other(docker_client, default_image):
    # Kernel A's cells each carry 4 MiB in their source while kernel B, of the same
    # notebook, runs cells and `%dockerrun list` on the same instance. A frame of
    # B's must never land inside one of A's (that killed the agent, and A's state).
    res = load.run_shared(a_cells=8)
    assert res["a_failed"] == []
    assert res["a_state_kept"], "A's x was lost"
    assert res["b_failed"] == []  # a "busy" refusal while A's cell runs is not a failure
    assert res["b_lists"] > 0 and res["b_cells"] > res["b_busy"]


# --- the checker itself (pure logic): it must be able to fail -------------------------------

class Recorded:
    """Stands in for a LoadKernel: only the iopub messages it kept."""

    def __init__(self, messages):
        self.iopub = [(parent, "stream", {"name": name, "text": text})
                      for parent, name, text in messages]

    messages_of = load.LoadKernel.messages_of


def cell_output(kernel, k, instances, lines, skip=(), extra=""):
    me = load.instance_id(kernel, k % instances)
    out = "".join("T %s %d %d\n" % (me, k, n) for n in range(lines) if n not in skip)
    return out + extra


def test_the_checker_counts_each_kind_of_fault():
    lines, instances = 4, 2
    good = [("m0", "stdout", cell_output(0, 0, instances, lines)),
            ("m0", "stderr", "E k0.i0 0 -1\n[fiddledock] a notice\n"),
            ("m1", "stdout", cell_output(0, 1, instances, lines)),
            ("m1", "stderr", "E k0.i1 1 -1\n")]
    cells = {"m0": 0, "m1": 1}
    assert sum(load.check_kernel(0, cells, instances, lines, Recorded(good)).values()) == 0
    bad = [("m0", "stdout", "T k0.i0 0 0\nT k0.i0 0 2\nT k0.i0 0 1\n"),  # 1 after 2; 3 lost
           ("m0", "stdout", "T k0.i0 0 2\n"),  # again
           ("m0", "stderr", "E k0.i0 0 -1\n"),
           ("m1", "stdout", "T k0.i0 1 0\n"),  # from the other instance
           ("m1", "stdout", "T k0.i1 1 1\nT k0.i1 1 2\nT k0.i1 1 3\n"),
           ("m1", "stdout", "T k0.i1 0 3\n"),  # cell 0's line under cell 1
           ("m1", "stderr", "T k1.i1 1 9\n"),  # another kernel's, on stderr
           ("zz", "stdout", "T k0.i1 1 0\n")]  # under no cell of this run
    counts = load.check_kernel(0, cells, instances, lines, Recorded(bad))
    # lost: cell 0 line 3, cell 1 line 0 and its stderr line (never delivered right)
    assert dict(counts) == {"misordered": 1, "duplicated": 1, "misrouted": 4, "lost": 3}
