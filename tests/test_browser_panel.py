"""End to end in JupyterLab and headless Chromium: streamed output and the panel.

A notebook runs a %%dockerrun cell (its first lines must show beneath the
cell while it still runs), then `%dockerrun panel`. In the panel the
instance has its row; "make default" (in the row's "⋯" menu) marks it; the
create form makes a second instance, whose row appears; delete asks for
confirmation, then the row goes and so does the container (checked through
the Docker API), and `%dockerrun list` no longer shows it. Then a long cell
runs in the first instance and restart is clicked meanwhile (JupyterLab
sends widget clicks over a kernel subshell, beside the running cell): it
asks first, saying the running cell is ended; cancel changes nothing; yes
ends the cell at once with a message that names the restart. Screenshots go
to the test's tmp_path; with FIDDLEDOCK_SCREENSHOT=path set, the one after
the create is also saved there (that is how docs/screenshot.png is made).
"""

import os
import re
import uuid

import pytest

from browser import Notebook
from conftest import _remove_scope

# ms: an instance create plus a stats refresh on a busy CI machine; waits end as soon
# as the page shows what is expected, so a generous bound costs nothing when all is well
ROW_TIMEOUT = 60_000


@pytest.fixture
def notebook(lab_server, docker_client):
    """A fresh notebook name; its instances are removed afterwards.

    The scope is the default one, the notebook's path (JupyterLab tells the
    kernel in JPY_SESSION_NAME), as for a user.
    """
    name = "%s/fiddledock.ipynb" % uuid.uuid4().hex[:8]  # a new folder: a new scope
    yield name
    _remove_scope(docker_client, str(lab_server.root / name))


def row(panel, name):
    """The panel row whose name cell says exactly ``name`` (maybe with the default mark)."""
    # an inner locator for has= is matched relative to the outer one: start at the page
    name_cell = panel.page.locator(".fd-name",
                                   has_text=re.compile(r"^\s*%s(\s|$)" % re.escape(name)))
    return panel.locator(".fd-row", has=name_cell)


def test_streamed_output_and_panel_create_delete(lab_server, lab_page, notebook, docker_client,
                                                  default_image, tmp_path):
    from playwright.sync_api import expect
    from fiddledock_magic._spec import container_name

    first, second = "alice", "bob"  # the notebook's scope is new: no clash with other runs
    scope = str(lab_server.root / notebook)
    cells = [
        "%load_ext fiddledock_magic",
        "%%%%dockerrun %s\n"
        "import os, platform, time\n"
        "print('hello from', platform.node(), 'as uid', os.getuid())\n"
        "for step in range(1, 6):\n"
        "    time.sleep(0.8)\n"
        "    print(f'step {step}/5 done')" % first,
        "%dockerrun panel",
        "%dockerrun list",
        "%%%%dockerrun %s\n"
        "print('started', flush=True)\n"
        "import time\n"
        "time.sleep(90)\n"
        "print('finished')" % first,
    ]
    lab_server.notebook(notebook, cells)
    nb = Notebook(lab_page, lab_server, notebook).open()
    page = lab_page

    nb.run(0)
    # Streamed: the first line is beneath the cell while the cell still runs.
    nb.run(1, wait=False)
    expect(nb.output(1)).to_contain_text("hello from", timeout=ROW_TIMEOUT)
    assert nb.prompt(1).inner_text().strip().startswith("[*]"), \
        "output appeared only after the cell had finished"
    nb.screenshot(tmp_path / "01-streaming.png")
    nb.wait_cell_done(1)
    expect(nb.output(1)).to_contain_text("step 5/5 done")
    expect(nb.output(1)).to_contain_text("as uid 1000")
    assert docker_client.api.inspect_container(container_name(first, scope))["State"]["Running"]

    # The panel shows the instance the cell created.
    nb.run(2)
    panel = nb.output(2).locator(".fd-panel")
    expect(panel).to_be_visible(timeout=ROW_TIMEOUT)
    alice = row(panel, first)
    expect(alice).to_be_visible(timeout=ROW_TIMEOUT)
    expect(alice.locator(".fd-status")).to_contain_text(re.compile("ready|not connected"),
                                                        timeout=ROW_TIMEOUT)
    expect(alice).to_contain_text("/ 512.0 MiB", timeout=ROW_TIMEOUT)
    expect(panel.locator(".fd-updated")).to_contain_text("updated", timeout=ROW_TIMEOUT)
    panel.scroll_into_view_if_needed()
    nb.screenshot(tmp_path / "02-panel.png")

    # Make default, in the row's menu: instant, marked in the row and the header.
    alice.locator("button.fd-menu").click()
    alice.locator("button.fd-make-default").click()
    expect(alice.locator(".fd-default")).to_be_visible(timeout=ROW_TIMEOUT)
    expect(panel.locator(".fd-default-label")).to_contain_text("default instance: %s" % first,
                                                               timeout=ROW_TIMEOUT)

    # Create from the panel: the new row appears (drawn from a background thread).
    panel.locator(".fd-field-name input").fill(second)
    panel.locator(".fd-field-memory input").fill("256m")
    panel.locator("button.fd-create").click()
    nb.screenshot(tmp_path / "03-creating.png")  # most likely with the progress line
    bob = row(panel, second)
    expect(bob).to_be_visible(timeout=ROW_TIMEOUT)
    expect(bob).to_contain_text("/ 256.0 MiB", timeout=ROW_TIMEOUT)
    expect(panel.locator(".fd-message")).to_contain_text("created instance %r" % second,
                                                         timeout=ROW_TIMEOUT)
    cname = container_name(second, scope)
    assert docker_client.api.inspect_container(cname)["HostConfig"]["Memory"] == 256 << 20
    nb.screenshot(tmp_path / "03-created.png")
    target = os.environ.get("FIDDLEDOCK_SCREENSHOT")
    if target:  # the README's picture: streamed output and the panel with two instances
        box = panel.bounding_box()
        nb.screenshot(target, clip={"x": 0, "y": 0, "width": page.viewport_size["width"],
                                    "height": min(page.viewport_size["height"],
                                                  box["y"] + box["height"] + 16)})

    # Delete asks first; confirming removes the row and the container.
    bob.locator("button.fd-menu").click()  # one menu open at a time: alice's folds
    expect(alice.locator("button.fd-make-default")).to_be_hidden()
    bob.locator("button.fd-delete").click()
    expect(bob.locator(".fd-confirm-text")).to_contain_text("Delete %s" % second,
                                                            timeout=ROW_TIMEOUT)
    nb.screenshot(tmp_path / "04-confirm.png")
    bob.locator("button.fd-confirm-delete").click()
    expect(bob).to_have_count(0, timeout=ROW_TIMEOUT)
    # the message comes with the refresh after the delete (a stats sample: ~1 s)
    expect(panel.locator(".fd-message")).to_contain_text("deleted instance %r" % second,
                                                         timeout=ROW_TIMEOUT)
    expect(alice).to_be_visible(timeout=ROW_TIMEOUT)
    assert not docker_client.containers.list(all=True, filters={"name": cname}), \
        "the panel removed the row but the container is still there"
    nb.screenshot(tmp_path / "05-deleted.png")

    # The line magic sees the same instances.
    nb.run(3)
    listing = nb.output(3)
    expect(listing).to_contain_text(first, timeout=ROW_TIMEOUT)
    assert second not in listing.inner_text()

    # Restart while a cell runs there: asked first (saying the cell is ended); cancel
    # changes nothing; yes ends the cell at once with a message that names the restart.
    before = docker_client.api.inspect_container(container_name(first, scope))["Id"]
    nb.run(4, wait=False)
    expect(nb.output(4)).to_contain_text("started", timeout=ROW_TIMEOUT)
    expect(alice.locator(".fd-status")).to_contain_text("busy", timeout=ROW_TIMEOUT)
    panel.scroll_into_view_if_needed()
    alice.locator("button.fd-menu").click()
    alice.locator("button.fd-restart").click()
    expect(alice.locator(".fd-confirm-text")).to_have_text(
        "Restart %s? It gets a new container: its variables and files are lost. "
        "The cell running in it is ended." % first, timeout=ROW_TIMEOUT)
    nb.screenshot(tmp_path / "06-confirm-restart.png")
    alice.locator("button.fd-cancel").click()
    expect(alice.locator("button.fd-restart")).to_be_visible(timeout=ROW_TIMEOUT)
    assert docker_client.api.inspect_container(container_name(first, scope))["Id"] == before
    assert nb.prompt(4).inner_text().strip().startswith("[*]")
    alice.locator("button.fd-restart").click()
    alice.locator("button.fd-confirm-restart").click()
    expect(nb.output(4)).to_contain_text(
        "the cell was stopped because instance '%s' was restarted from the panel; its "
        "variables are gone" % first, timeout=ROW_TIMEOUT)
    nb.wait_cell_done(4)
    assert "finished" not in nb.output(4).inner_text()
    expect(panel.locator(".fd-message")).to_contain_text(
        "restarted '%s': a new container, its state is lost; the cell running in it was ended"
        % first, timeout=ROW_TIMEOUT)
    assert docker_client.api.inspect_container(container_name(first, scope))["Id"] != before
    nb.screenshot(tmp_path / "07-restarted.png")
