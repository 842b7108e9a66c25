"""The instance panel without a browser: its model and widgets against the real engine.

Clicks are ``Button.click()`` (what a frontend's click message triggers in
the kernel); what a user would read is the widgets' values. The browser test
(test_browser_panel.py) shows the same panel in JupyterLab.
"""

import html
import re
import time

import docker
import docker.errors
import pytest
from IPython.core.error import UsageError

from conftest import wait_for

from fiddledock_magic._docker_backend import DockerBackend
from fiddledock_magic._extension import manager_of
from fiddledock_magic._manager import InstanceManager
from fiddledock_magic._panel import InstancePanel
from fiddledock_magic._panel_model import PanelModel, model_for
from fiddledock_magic._spec import container_name

MiB = 1 << 20


@pytest.fixture
def panel(shell, own_scope):
    """The session notebook's panel, in a scope of the test's own."""
    p = shell.run_line_magic("dockerrun", "panel")
    p.model.refresh()
    yield p
    p.model.wait()
    p._view_count = 0  # as if its output were cleared: no live refresh afterwards
    p.model._set(message="", message_kind="", field_errors={}, confirming={})
    for field in p.fields.values():
        field.value = ""


def text(html_widget):
    """What a user reads in an HTML widget: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_widget.value))


def row_texts(panel, name):
    return [text(cell) for cell in panel.rows[name].cells]


def shown_names(panel):
    return [row.name for row in panel.table.children]


def container(client, name, scope):
    try:
        return client.api.inspect_container(container_name(name, scope))
    except docker.errors.NotFound:
        return None


# --- the line magic ------------------------------------------------------------------

def test_panel_subcommand_gives_the_notebooks_one_panel(shell, own_scope, capsys):
    p = shell.run_line_magic("dockerrun", "panel")
    assert isinstance(p, InstancePanel)
    assert shell.run_line_magic("dockerrun", "panel") is p  # shown again, not a second copy
    assert p.model is model_for(manager_of(shell))
    shell.run_line_magic("dockerrun", "help")
    assert re.search(r"panel\s+Show the instance panel", capsys.readouterr().out)
    with pytest.raises(UsageError, match="unrecognized arguments: extra"):
        shell.run_line_magic("dockerrun", "panel extra")


# --- rows follow instances -------------------------------------------------------------

def test_rows_follow_instances_made_and_removed_by_the_magics(shell, panel, unique_name,
                                                             docker_client, own_scope):
    shell.run_cell("%%%%dockerrun %s\nx = 1" % unique_name)
    panel.model.refresh()
    assert shown_names(panel) == [unique_name]
    name, image, status, uptime, memory, cpu = row_texts(panel, unique_name)
    assert name == unique_name
    assert image == manager_of(shell).config.image
    assert status.endswith("ready")
    assert re.fullmatch(r"\d+s", uptime)
    assert re.fullmatch(r"\d+\.\d MiB / 512\.0 MiB", memory)
    assert re.fullmatch(r"\d+\.\d%", cpu)
    assert text(panel.empty) == ""

    shell.run_line_magic("dockerrun", "delete %s" % unique_name)
    panel.model.refresh()
    assert shown_names(panel) == [] and unique_name not in panel.rows
    assert "No instances in this notebook yet" in text(panel.empty)


def test_live_refresh_while_a_view_is_on_screen(shell, panel, unique_name, docker_client,
                                                own_scope):
    model = panel.model
    assert not model.visible
    model.interval = 1.0
    panel._view_count = 1  # what the frontend sends when it draws the panel
    assert model.visible
    try:
        # The periodic refresh: an instance made and removed without any cell.
        shell.run_line_magic("dockerrun", "create %s" % unique_name)
        wait_for(lambda: unique_name in shown_names(panel), "the new instance's row", 15)
        docker_client.api.remove_container(
            container(docker_client, unique_name, own_scope)["Id"], force=True)
        wait_for(lambda: unique_name not in shown_names(panel), "the removed instance's row "
                 "to go", 15)

        # The hook after each cell: with a long interval only it can show the row soon.
        model.interval = 60.0
        seen = model.refreshed_at
        wait_for(lambda: model.refreshed_at != seen, "a refresh", 15)  # now sleeping 60 s
        shell.run_cell("%%%%dockerrun %s\nprint('hi')" % unique_name)
        wait_for(lambda: unique_name in shown_names(panel), "the row of the cell's instance", 15)
    finally:
        model.interval = 3.0
        panel._view_count = 0
    assert not model.visible


# --- the create form -----------------------------------------------------------------------

def test_create_form_validation_messages(shell, panel, unique_name, docker_client, own_scope):
    fields = panel.fields
    fields["name"].value = "no spaces please"
    fields["memory"].value = "lots"
    fields["cpus"].value = "fast"
    panel.b_create.click()
    errors = text(panel.field_errors)
    assert "name: instance names are 1-63 letters" in errors
    assert "memory: memory must be a size like 512m or 1g, not 'lots'" in errors
    assert "CPUs: CPUs must be a number like 1 or 0.5, not 'fast'" in errors
    assert text(panel.message).endswith("not created: fix name, memory, cpus (marked in red)")
    assert fields["memory"].layout.border and not fields["image"].layout.border
    assert not panel.model.busy()

    fields["name"].value, fields["memory"].value, fields["cpus"].value = unique_name, "", ""
    fields["pids"].value = "3"
    panel.b_create.click()
    assert "pids: pids must be at least 16" in text(panel.field_errors)

    fields["pids"].value = ""
    fields["name"].value = "x" * 64
    panel.b_create.click()
    assert "name: instance names are 1-63" in text(panel.field_errors)
    assert container(docker_client, unique_name, own_scope) is None  # nothing was created


def test_create_with_an_unknown_image_fails_inside_the_panel(shell, panel, unique_name,
                                                             docker_client, own_scope, capfd):
    panel.fields["name"].value = unique_name
    panel.fields["image"].value = "fiddledock-no-such-image:404"
    panel.b_create.click()
    assert panel.model.wait()
    message = text(panel.message)
    assert message.startswith("\u2716 creating %r failed: image 'fiddledock-no-such-image:404' "
                              "is not installed" % unique_name)
    assert panel.fields["name"].value == unique_name  # kept, to fix and try again
    assert container(docker_client, unique_name, own_scope) is None
    assert "Traceback" not in capfd.readouterr().err


def test_create_of_an_existing_name_is_refused(shell, panel, unique_name, own_scope):
    shell.run_line_magic("dockerrun", "create %s" % unique_name)
    panel.model.refresh()
    panel.fields["name"].value = unique_name
    panel.b_create.click()
    assert "name: an instance named %r exists already" % unique_name in text(panel.field_errors)
    assert not panel.model.busy()


# --- the buttons call the instance layer ----------------------------------------------------

def test_buttons_create_reset_restart_default_delete(shell, panel, run, unique_name, capsys,
                                                     docker_client, own_scope):
    manager = manager_of(shell)
    panel.fields["name"].value = unique_name
    panel.fields["memory"].value = "256m"
    panel.fields["cpus"].value = "0.5"
    clicked = time.monotonic()
    panel.b_create.click()
    returned = time.monotonic() - clicked
    # The click returns at once; the work goes on in a thread, with progress shown.
    assert panel.model.busy(unique_name) and not panel.b_create.disabled  # another may follow
    assert "creating %r" % unique_name in text(panel.activity)  # no row yet: shown below
    assert panel.model.wait()
    assert returned < 0.5, "the click blocked for %.2f s" % returned
    assert text(panel.activity) == ""
    assert text(panel.message) == "\u2714 created instance %r" % unique_name
    info = container(docker_client, unique_name, own_scope)
    assert info["HostConfig"]["Memory"] == 256 * MiB
    assert info["HostConfig"]["NanoCpus"] == 500_000_000
    assert row_texts(panel, unique_name)[4].endswith("/ 256.0 MiB")
    assert panel.fields["name"].value == ""  # the form is emptied for the next one

    run("x = 41", unique_name)
    row = panel.rows[unique_name]
    row.b_reset.click()
    assert panel.model.wait()
    assert "reset %r" % unique_name in text(panel.message)
    assert run("print('x' in globals())", unique_name)[1].strip() == "False"
    assert container(docker_client, unique_name, own_scope)["Id"] == info["Id"]

    row.b_restart.click()  # asks first, like delete
    assert row.ask in row.actions.children and row.b_yes["restart"] in row.actions.children
    assert text(row.ask) == ("Restart %s? It gets a new container: its variables and files "
                             "are lost." % unique_name)
    assert container(docker_client, unique_name, own_scope)["Id"] == info["Id"]
    row.b_yes["restart"].click()
    assert panel.model.wait()
    assert "restarted %r" % unique_name in text(panel.message)
    restarted = container(docker_client, unique_name, own_scope)
    assert restarted["Id"] != info["Id"]
    assert restarted["HostConfig"]["Memory"] == 256 * MiB  # same settings

    row.b_default.click()
    assert manager.config.default_instance == unique_name
    assert "\u2605 default" in row_texts(panel, unique_name)[0]
    assert row.b_default.disabled
    capsys.readouterr()
    shell.run_cell_magic("dockerrun", "", "import socket; print(socket.gethostname())")
    # a bare %%dockerrun runs in the instance made default (its hostname is its name)
    assert capsys.readouterr().out.strip() == unique_name
    # ...and the line magic's `use` moves the mark the other way.
    shell.run_line_magic("dockerrun", "use elsewhere")
    assert panel.model.default_instance == "elsewhere"
    assert "default" not in row_texts(panel, unique_name)[0]
    assert "default instance: elsewhere (not created yet)" in text(panel.default_label)

    row.b_delete.click()  # asks first
    assert row.ask in row.actions.children and row.b_yes["delete"] in row.actions.children
    assert "Delete %s? Its state is lost." % unique_name == text(row.ask)
    row.b_no.click()
    assert row.b_delete in row.actions.children
    assert container(docker_client, unique_name, own_scope) is not None
    row.b_delete.click()
    row.b_yes["delete"].click()
    assert panel.model.wait()
    assert text(panel.message) == "\u2714 deleted instance %r and its container" % unique_name
    assert unique_name not in shown_names(panel)
    assert container(docker_client, unique_name, own_scope) is None
    capsys.readouterr()
    shell.run_line_magic("dockerrun", "list")
    assert unique_name not in capsys.readouterr().out
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err


def test_one_action_at_a_time_per_row_and_the_other_rows_stay_usable(shell, panel, run,
                                                                      unique_name, own_scope):
    other = unique_name + "b"
    shell.run_line_magic("dockerrun", "create %s" % unique_name)
    shell.run_line_magic("dockerrun", "create %s" % other)
    panel.model.refresh()
    row, other_row = panel.rows[unique_name], panel.rows[other]
    row.b_restart.click()
    row.b_yes["restart"].click()
    # Only this row shows the action; its buttons are gone until it ends.
    assert row.actions.children == (row.working,)
    assert text(row.working).strip() == "restarting %r..." % unique_name
    assert text(panel.activity) == ""
    assert other_row.b_reset in other_row.actions.children and not other_row.b_reset.disabled
    assert not panel.b_create.disabled
    panel.model.restart(unique_name)  # a second request on the same row while the first runs
    assert text(panel.message).startswith("\u2716 wait until restarting %r" % unique_name)
    run("y = 2", other)
    other_row.b_reset.click()  # another row acts meanwhile
    assert panel.model.busy(other)
    assert panel.model.wait()
    assert not panel.model.busy()
    assert row.b_restart in row.actions.children
    assert run("print('y' in globals())", other)[1].strip() == "False"
    assert "restarted" in text(panel.message) or "reset" in text(panel.message)


# --- errors stay in the panel -------------------------------------------------------------

def test_action_on_an_instance_removed_behind_its_back(shell, panel, unique_name,
                                                      docker_client, own_scope, capfd):
    shell.run_line_magic("dockerrun", "create %s" % unique_name)
    panel.model.refresh()
    row = panel.rows[unique_name]
    docker_client.api.remove_container(container(docker_client, unique_name, own_scope)["Id"],
                                       force=True)
    row.b_restart.click()  # the row is still there: the panel has not refreshed yet
    row.b_yes["restart"].click()
    assert panel.model.wait()
    assert text(panel.message).startswith("\u2716 restarting %r failed: no instance named %r"
                                          % (unique_name, unique_name))
    assert unique_name not in shown_names(panel)  # and the refresh after it shows the truth
    assert "Traceback" not in capfd.readouterr().err


def test_unreachable_engine_is_reported_in_the_panel():
    from fiddledock_magic._config import DockerRun
    offline = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    bad = InstanceManager(DockerRun(scope="pytest-no-engine"), backend=DockerBackend(offline))
    model = PanelModel(bad)
    try:
        view = InstancePanel(model)
        assert model.refresh() is False
        assert "cannot list instances: cannot reach the Docker engine" in text(view.updated)
        view.close()
    finally:
        model.close()
