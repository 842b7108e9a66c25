"""In a real JupyterLab page: a cell on several instances shows each instance's
output under a header naming it (with how it ended), in the order named, and
one summary line beneath them; the panel shows each one's last result. With
FIDDLEDOCK_SCREENSHOT=path set, the cell and the panel are also saved there
(that is how the README's docs/screenshot.png is made)."""

import os
import re
import uuid

import pytest

from browser import Notebook
from conftest import _remove_scope
from test_browser_panel import ROW_TIMEOUT, row


@pytest.fixture
def scope(docker_client):
    name = "pytest-browser-%s" % uuid.uuid4().hex[:8]
    yield name
    _remove_scope(docker_client, name)


def test_a_cell_on_three_instances_shows_three_sections_and_a_summary(
        lab_server, lab_page, scope, default_image, tmp_path):
    from playwright.sync_api import expect
    cells = [
        "%%load_ext fiddledock_magic\n%%config DockerRun.scope = %r" % scope,
        "%%dockerrun amy ben cleo --timeout 3\n"
        "import socket, time\n"
        "me = socket.gethostname()\n"
        "print('hello from', me)\n"
        "if me == 'ben':\n"
        "    1 / 0\n"
        "if me == 'cleo':\n"
        "    time.sleep(60)",
        "%dockerrun panel",
    ]
    lab_server.notebook("classroom.ipynb", cells)
    nb = Notebook(lab_page, lab_server, "classroom.ipynb").open()
    nb.run(0)
    nb.run(1, timeout=180_000)
    out = nb.output(1)
    summary = out.get_by_text(re.compile(r"^FiddleDock: 3 instances: ok: amy"))
    expect(summary).to_be_visible()
    assert re.fullmatch(r"FiddleDock: 3 instances: ok: amy \(\d+\.\d s\); failed: ben \(\d+\.\d s\); "
                        r"timed out: cleo \(\d+\.\d s\)", summary.inner_text().strip())
    sections = out.locator(".fiddledock-section")
    expect(sections).to_have_count(3)
    headers = [sections.nth(i).locator("div").first.inner_text() for i in range(3)]
    assert [h.split(":")[0] for h in headers] == ["amy", "ben", "cleo"]
    assert re.fullmatch(r"amy: ok \(\d+\.\d s\)", headers[0])
    assert re.fullmatch(r"ben: failed \(\d+\.\d s\)", headers[1])
    assert re.fullmatch(r"cleo: timed out \(\d+\.\d s\)", headers[2])
    texts = [sections.nth(i).inner_text() for i in range(3)]
    assert "hello from amy" in texts[0] and "Error" not in texts[0]
    assert "ZeroDivisionError: division by zero" in texts[1]
    assert "Cell In[2] (instance ben), line 6" in texts[1]
    assert "timed out after 3 s" in texts[2] and "(instance cleo)" in texts[2]
    # the sections come before the summary, in the order the cell named them
    boxes = [sections.nth(i).bounding_box()["y"] for i in range(3)]
    assert boxes == sorted(boxes) and boxes[2] < summary.bounding_box()["y"]
    out.scroll_into_view_if_needed()
    nb.screenshot(tmp_path / "classroom.png", full_page=True)

    # The panel: each instance's last result, as the cell's summary said.
    nb.run(2)
    panel = nb.output(2).locator(".fd-panel")
    expect(panel).to_be_visible(timeout=ROW_TIMEOUT)
    for name, result in (("amy", "ok"), ("ben", "error"), ("cleo", "timeout")):
        expect(row(panel, name).locator(".fd-result")).to_contain_text(
            re.compile(r"^\W*%s\b" % result), timeout=ROW_TIMEOUT)
    target = os.environ.get("FIDDLEDOCK_SCREENSHOT")
    if target:  # the README's picture: a cell for the class and the panel
        lab_page.set_viewport_size({"width": 1200, "height": 2400})  # all of it on screen
        nb.cell(1).evaluate("cell => cell.scrollIntoView({block: 'start'})")
        lab_page.wait_for_timeout(500)  # JupyterLab lays the cells out again
        top = nb.cell(1).bounding_box()["y"]
        box = panel.bounding_box()
        nb.screenshot(target, clip={"x": 0, "y": top, "width": 1200,
                                    "height": box["y"] + box["height"] + 8 - top})
