"""In a real JupyterLab page: a %%dockerrun cell's traceback names the cell as
its prompt does and the line as the editor numbers it, and reads like a local
cell's traceback (same colours for the error line)."""

import uuid

import pytest

from browser import Notebook
from conftest import _remove_scope


@pytest.fixture
def scope(docker_client):
    name = "pytest-browser-%s" % uuid.uuid4().hex[:8]
    yield name
    _remove_scope(docker_client, name)


COLOURS = """out => {
    const pre = out.querySelector('.jp-RenderedText pre');
    const spans = [...pre.querySelectorAll('span')];
    const ename = spans[spans.length - 1];  // the error line's name: the last coloured part
    return [getComputedStyle(ename).color, getComputedStyle(pre).color,
            getComputedStyle(out.querySelector('.jp-RenderedText')).backgroundColor];
}"""


def test_traceback_names_the_prompts_cell_and_the_editors_line(lab_server, lab_page, scope,
                                                               default_image, tmp_path):
    from playwright.sync_api import expect
    cells = [
        "%%load_ext fiddledock_magic\n%%config DockerRun.scope = %r" % scope,
        "%%dockerrun tb\ndef half(x):\n    return 1 / x",
        "%%dockerrun tb\na = 1\nb = 2\nhalf(0)\nc = 3",
        "def half(x):\n    return 1 / x\nhalf(0)",
    ]
    lab_server.notebook("tracebacks.ipynb", cells)
    nb = Notebook(lab_page, lab_server, "tracebacks.ipynb").open()
    for index in range(4):
        nb.run(index)
    defined, failed = nb.prompt(1).inner_text().strip(), nb.prompt(2).inner_text().strip()
    assert defined == "[2]:" and failed == "[3]:", (defined, failed)
    out = nb.output(2)
    expect(out.get_by_text("ZeroDivisionError: division by zero")).to_be_visible()
    text = out.inner_text()
    assert "Cell In[3] (instance tb), line 4" in text, text
    assert "----> 4 half(0)" in text
    assert "Cell In[2] (instance tb), line 3, in half()" in text
    # The editor shows half(0) on line 4 of cell [3].
    assert nb.cell(2).locator(".cm-line").nth(3).inner_text() == "half(0)"
    # The error line looks as a local cell's does.
    remote = out.evaluate(COLOURS.replace("out =>", "(out) =>"))
    local = nb.output(3).evaluate(COLOURS)
    assert remote == local, (remote, local)
    nb.screenshot(tmp_path / "traceback.png")
