"""The teaching notebooks run clean top to bottom, in a real kernel, against the real engine.

Each notebook is executed by nbclient in the venv's python3 kernel with its own
JPY_SESSION_NAME (the scope instance names belong to), so runs never share
instances. Beyond "no error", each test checks what a reader of that notebook
would look at, and that the notebook's last cell left no instance behind.
"""

import ast
import base64
import json
import os
import pathlib
import re
import uuid

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
# Notebooks that need the internet: never executed here (CI is offline).
NEEDS_NETWORK = {"05-web-scraping-needs-network.ipynb"}
CELL_TIMEOUT = 120  # seconds; the slowest cell (creating an instance, a fork bomb) takes ~5
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def all_notebooks():
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


class Ran:
    """An executed notebook: its cells by id, the scope it ran in, what probes printed."""

    def __init__(self, nb, scope):
        self.nb = nb
        self.scope = scope
        self.cells = {c.id: c for c in nb.cells if c.cell_type == "code"}
        self.probes = {}  # cell id -> stdout of the test's probe run after that cell

    def outputs(self, cid):
        return self.cells[cid].outputs

    def text(self, cid, name="stdout"):
        return ANSI.sub("", "".join(o.text for o in self.outputs(cid)
                                    if o.output_type == "stream" and o.name == name))

    def data(self, cid, kinds=("execute_result", "display_data")):
        return [o.data for o in self.outputs(cid) if o.output_type in kinds
                and "fiddledock-notice" not in o.data.get("text/html", "")]

    def told(self, cid):
        """What the reader is told beneath the cell: stderr and FiddleDock's notices."""
        notices = "".join(o.data["text/plain"] + "\n" for o in self.outputs(cid)
                          if o.output_type == "display_data"
                          and "fiddledock-notice" in o.data.get("text/html", ""))
        return self.text(cid, "stderr") + notices

    def shown(self, cid):
        """Everything a reader sees as text: streams and the plain form of rich outputs."""
        plain = "".join(d.get("text/plain", "") for d in self.data(cid))
        return self.text(cid) + self.text(cid, "stderr") + ANSI.sub("", plain)

    def value(self, cid):
        """The cell's Out[] as a Python value (literal_eval of its text/plain)."""
        results = self.data(cid, kinds=("execute_result",))
        assert len(results) == 1, "cell %s has no single Out[]: %r" % (cid, self.outputs(cid))
        return ast.literal_eval(results[0]["text/plain"])


# Run in the kernel after the panel cell: what the panel widget holds is what a
# browser draws. Its rows fill in from a background thread, so wait for them.
PANEL_NAMES = """
import json, time
def _fd_values(widget, css):
    found = [widget.value] if css in widget._dom_classes else []
    for child in getattr(widget, "children", ()):
        found += _fd_values(child, css)
    return found
_panel = get_ipython().run_line_magic("dockerrun", "panel")  # the same panel, not shown again
_deadline = time.monotonic() + %d
while len([v for v in _fd_values(_panel, "fd-name") if v]) < %d and time.monotonic() < _deadline:
    time.sleep(0.2)
print(json.dumps(_fd_values(_panel, "fd-name")))
"""


@pytest.fixture
def execute(docker_client, default_image):
    """execute(name, probes) -> Ran; removes whatever the run left, after checking it left nothing.

    Cells run one by one in a real kernel. ``probes`` maps a cell id to code
    run in the same kernel right after that cell (not part of the notebook);
    its stdout is kept in ``Ran.probes``.
    """
    from fiddledock_magic._spec import scope_id
    scopes = []

    def ours(scope):
        return docker_client.containers.list(
            all=True, filters={"label": "fiddledock.scope=%s" % scope_id(scope)})

    def _execute(name, probes=None):
        nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
        scope = "pytest-nb-%s/notebooks/%s" % (uuid.uuid4().hex[:8], name)
        scopes.append(scope)
        env = dict(os.environ, JPY_SESSION_NAME=scope)
        client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                allow_errors=False, resources={"metadata": {"path": str(NOTEBOOKS)}})
        ran = Ran(nb, scope)
        cells = list(nb.cells)
        with client.setup_kernel(env=env):
            for index, cell in enumerate(cells):
                # raises CellExecutionError (with the cell's error) at the first failing cell
                client.execute_cell(cell, index)
                code = (probes or {}).get(cell.get("id"))
                if code:
                    probe = nbformat.v4.new_code_cell(code)
                    nb.cells.append(probe)  # nbclient writes outputs by index
                    try:
                        client.execute_cell(probe, len(nb.cells) - 1)
                    finally:
                        nb.cells.remove(probe)
                    ran.probes[cell.id] = "".join(o.get("text", "") for o in probe.outputs)
        left = [c.name for c in ours(scope)]
        assert not left, "%s left instances behind: %s" % (name, left)
        return ran

    yield _execute
    for scope in scopes:
        for container in ours(scope):
            container.remove(force=True)


# --- what is stored ------------------------------------------------------------------


@pytest.mark.parametrize("name", all_notebooks())
def test_stored_without_outputs(name):
    nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (name, cell.id)


def test_every_notebook_is_run_here_or_declared_as_needing_network():
    names = all_notebooks()
    assert len([n for n in names if n not in NEEDS_NETWORK]) >= 4
    assert NEEDS_NETWORK <= set(names)
    # notebook "NN-..." is executed by a test named test_NN_...
    executed = {t.split("_")[1] for t in globals() if re.match(r"test_\d\d_", t)}
    missing = [n for n in names if n not in NEEDS_NETWORK and n[:2] not in executed]
    assert not missing, "no test executes %s" % missing
    for name in names:
        nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        if name in NEEDS_NETWORK:  # says so up front, and asks for the network explicitly
            assert "needs network access" in nb.cells[0].source
            assert "--network bridge" in code
        else:
            assert "--network" not in code and "DockerRun.network" not in code, name


def test_every_notebook_cleans_up_in_its_last_cell():
    for name in all_notebooks():
        nb = nbformat.read(str(NOTEBOOKS / name), as_version=4)
        last = [c for c in nb.cells if c.cell_type == "code"][-1]
        assert "%dockerrun delete --all" in last.source, name


# --- each notebook, executed ---------------------------------------------------------


def test_01_getting_started(execute):
    ran = execute("01-getting-started.ipynb")
    host, box = ran.value("host-root"), ran.value("box-root")
    assert box != host and "home" in box and "tmp" in box
    host_machine = ran.text("host-root").split("machine:")[1].split()[0]
    box_machine = ran.text("box-root").split("machine:")[1].split()[0]
    assert host_machine != box_machine and box_machine == "hello"  # named after its instance
    assert ran.text("whoami").splitlines() == [
        "user id: 1000", "working folder: /home/sandbox", "files here: []"]
    assert "written in an earlier cell" in ran.text("persist-2")
    assert "radius is now 3" in ran.text("persist-2")
    # Streamed: each step arrived as its own output, in order, before the end of the cell.
    steps = [o.text for o in ran.outputs("stream") if o.output_type == "stream" and "step" in o.text]
    assert len(steps) >= 3, steps
    assert re.findall(r"step (\d)", "".join(steps)) == list("12345")
    assert "this line goes to stderr" in ran.text("stream", "stderr")
    assert "and this one comes from a child process" in ran.text("stream")
    # --no-raise: the container's traceback is shown and the cell did not fail.
    assert "IndexError: list index out of range" in ran.text("error", "stderr")
    assert "_magics.py" not in ran.text("error", "stderr")
    assert "alice.txt" in ran.text("alice")
    assert ran.text("bob").splitlines() == [
        "does bob have alice's variable? False", "bob's files: []", "can bob find alice.txt? False"]
    listing = ran.shown("list")
    assert all(n in listing for n in ("hello", "alice", "bob")), listing
    assert "only alice knows this" in ran.text("use-run")


def test_02_safety(execute):
    ran = execute("02-safety.ipynb")
    assert "user id: 1000" in ran.text("setup")
    assert "timed out after 2 s" in ran.told("timeout")
    assert ran.text("after-timeout").strip() == "I am still here"
    stubborn = ran.told("stubborn")
    assert "KeyboardInterrupt" in stubborn and "killed" in stubborn
    assert ran.text("after-stubborn").strip().endswith("is 'kept' still defined? False")
    assert "out of memory" in ran.told("memory")
    assert "still usable after the memory bomb" in ran.text("after-memory")
    fork = ran.told("fork")
    assert "hit the process limit (64)" in fork and "processes it started were ended" in fork
    assert "reset" not in fork  # nothing is left to end
    after_fork = ran.text("after-fork")
    assert "still usable after the fork bomb" in after_fork
    alive = int(re.search(r"(\d+) of your processes alive", after_fork).group(1))
    assert alive == 1, after_fork  # the worker: none of the bomb's processes
    network = ran.text("network")
    assert "network cards: ['lo']" in network and "no network:" in network
    disk = ran.text("disk")
    assert "/tmp/big.bin refused: No space left on device" in disk
    assert "/etc/hacked.txt refused: Read-only file system" in disk
    flood = ran.text("flood")
    assert flood.startswith("line 0 ....") and len(flood) == 2048, len(flood)
    told = ran.told("flood")
    assert told.count("[fiddledock]") == 1 and "output limit of 2.0 KiB reached" in told, told
    assert ran.text("survived").strip() == "the instance survived everything"


def test_03_rich_output_and_files(execute):
    ran = execute("03-rich-output-and-files.ipynb")
    assert "python" in ran.value("value")
    pngs = [d["image/png"] for d in ran.data("plot") if "image/png" in d]
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")
    table = ran.data("table", kinds=("execute_result",))[0]["text/html"]
    assert "<table>" in table and "<th>n squared</th>" in table and "<td>25</td>" in table
    shown = ran.data("display", kinds=("display_data",))
    assert [sorted(set(d) - {"text/plain"}) for d in shown] == [[], ["text/markdown"],
                                                                ["text/html"], ["text/html"]]
    assert shown[0]["text/plain"] == "'plain text from the container'"
    assert shown[1]["text/markdown"] == "**Note:** this is *Markdown*"
    html = ran.data("html", kinds=("execute_result",))[0]["text/html"]
    assert "<b>bold text stays</b>" in html and "script" not in html
    # The data file went in, the results came out.
    assert "-> lab:/home/sandbox/temperatures.csv (1 file, 56 bytes)" in ran.text("put")
    assert "5 days, mean 12.50 C, warmest Fri" in ran.text("work")
    assert "5 days, mean 12.50 C, warmest Fri" in ran.text("show-results")
    chart = [d for d in ran.data("show-results") if "image/png" in d]
    assert len(chart) == 1 and base64.b64decode(chart[0]["image/png"]).startswith(b"\x89PNG")


def test_04_classroom(execute):
    ran = execute("04-classroom.ipynb", probes={"panel": PANEL_NAMES % (15, 4)})
    students = ran.value("students")
    assert students == ["ada", "grace", "linus", "margaret"]
    assert ran.text("submit").count("submission loaded") == len(students)
    # One cell for the whole class: a section per student, in order, and the summary.
    sections = [d["text/plain"] for d in ran.data("class")]
    assert [s.split(":")[0] for s in sections] == ["--- %s" % n for n in students], sections
    assert "average([]) = 0" in sections[0] and "timed out" in sections[3]
    assert "timed out after 3 s" in sections[3] and "(instance margaret)" in sections[3]
    assert re.fullmatch(r"FiddleDock: 4 instances: ok: ada \(\d+\.\d s\), grace \(\d+\.\d s\), "
                        r"linus \(\d+\.\d s\); timed out: margaret \(\d+\.\d s\)\n",
                        ran.text("class", "stderr")), ran.text("class", "stderr")
    # One result per student, gathered back from each student's own instance.
    assert ran.value("check") == {"ada": 4, "grace": 4, "linus": 3,
                                  "margaret": "no answer (timed out)"}
    assert "timed out after 3 s" in ran.told("check")
    report = ran.text("report")
    assert "ada        4/4" in report and "margaret   no answer (timed out)" in report
    views = [d for d in ran.data("panel") if "application/vnd.jupyter.widget-view+json" in d]
    assert len(views) == 1, ran.outputs("panel")
    # The panel shows a row per student.
    names = [re.sub(r"<[^>]*>", " ", v).split() for v in json.loads(ran.probes["panel"])]
    assert sorted(n[0] for n in names if n) == students, names


def test_06_packages_without_network(execute, monkeypatch, tmp_path):
    monkeypatch.setenv("FIDDLEDOCK_WHEEL_CACHE", str(tmp_path / "cache"))  # the kernel's
    ran = execute("06-packages-without-network.ipynb")
    table = [d["text/html"] for d in ran.data("dataframe") if "text/html" in d]
    assert len(table) == 1 and "<table" in table[0] and "margaret" in table[0], ran.outputs(
        "dataframe")
    hint = ran.text("missing", "stderr")
    assert "ModuleNotFoundError: No module named 'gradebook'" in hint
    assert "%dockerrun install data gradebook" in hint
    assert re.fullmatch(r"\['gradebook-1\.0-\S+-none-any\.whl'\]", ran.text("make-wheel").strip())
    assert "installed in data: gradebook-1.0" in ran.text("install")
    graded = [d["text/html"] for d in ran.data("use") if "text/html" in d]
    assert len(graded) == 1 and "grade" in graded[0] and ">A<" in graded[0], ran.outputs("use")
