"""The panel acting on many rows: ticks, one action on every ticked row, the last
result of each instance, and each row's menu; its model and widgets against the
real engine and a real IPython shell (clicks are ``Button.click()``, what a user
reads is the widgets' values), and a real kernel where a cell runs meanwhile.
"""

import re
import time

import pytest

from conftest import WHEN_RUNNING, stream_text
from fiddledock_magic._extension import manager_of
from fiddledock_magic._panel_batch import Batch
from fiddledock_magic._panel_model import record_result
from test_panel import container, panel, shown_names, text  # noqa: F401 (panel: a fixture)


def created(shell, panel, *names):
    for name in names:
        shell.run_line_magic("dockerrun", "create %s" % name)
    panel.model.refresh()
    return names


def defined(run, name, variable):
    return run("print(%r in globals())" % variable, name)[1].strip() == "True"


def test_ticks_follow_the_rows(shell, panel, unique_name, own_scope):
    a, b, c = created(shell, panel, unique_name + "a", unique_name + "b", unique_name + "c")
    model = panel.model
    assert text(panel.selection) == "Tick rows to restart, reset or delete several at once:"
    assert all(button.disabled for button in panel.b_selected.values())

    panel.rows[a].tick.value = True  # what a click on the row's box sends
    panel.rows[c].tick.value = True
    assert model.selected == [a, c]
    assert text(panel.selection) == "2 selected (%s and %s):" % (a, c)
    assert not any(button.disabled for button in panel.b_selected.values())
    assert not panel.select_all.value

    panel.select_all.value = True
    assert model.selected == [a, b, c]
    panel.rows[b].tick.value = False  # unticking one row unticks "all", not every row
    assert model.selected == [a, c] and not panel.select_all.value
    model.select("nobody")  # a name without a row is never selected
    assert model.selected == [a, c]
    panel.select_all.value = True
    panel.select_all.value = False
    assert model.selected == [] and not panel.rows[a].tick.value

    # A row that goes (deleted elsewhere) leaves the selection at the next refresh.
    model.select_all()
    shell.run_line_magic("dockerrun", "delete %s" % b)
    model.refresh()
    assert model.selected == [a, c] and panel.select_all.value


def test_reset_then_delete_the_ticked_rows(shell, panel, run, unique_name, docker_client,
                                           own_scope):
    a, b, kept = created(shell, panel, unique_name + "a", unique_name + "b", unique_name + "k")
    for name in (a, b, kept):
        run("x = 1", name)
    ids = {name: container(docker_client, name, own_scope)["Id"] for name in (a, b, kept)}
    model = panel.model
    model.select(a)
    model.select(b)

    panel.b_selected["reset"].click()  # at once, no question
    assert model.wait()
    assert text(panel.message) == "\u2714 reset 2 instances: %s and %s" % (a, b)
    assert not defined(run, a, "x") and not defined(run, b, "x") and defined(run, kept, "x")
    assert all(container(docker_client, n, own_scope)["Id"] == ids[n] for n in (a, b))
    assert model.selected == [a, b]  # kept ticked: the next action can follow

    panel.b_selected["delete"].click()  # asks once for all, naming how many
    assert panel.bulk.children == (panel.selected_ask, panel.b_selected_yes["delete"],
                                   panel.b_selected_no)
    assert text(panel.selected_ask) == ("Delete 2 instances (%s and %s)? Their state is lost."
                                        % (a, b))
    panel.b_selected_no.click()
    assert panel.b_selected["delete"] in panel.bulk.children
    assert container(docker_client, a, own_scope) is not None

    panel.b_selected["delete"].click()
    panel.b_selected_yes["delete"].click()
    # Each row shows its own action while it runs.
    assert {text(panel.rows[n].working).strip() for n in (a, b) if n in panel.rows} <= {
        "deleting %r..." % a, "deleting %r..." % b, ""}
    assert model.wait()
    assert text(panel.message) == "\u2714 deleted 2 instances: %s and %s" % (a, b)
    assert container(docker_client, a, own_scope) is None
    assert container(docker_client, b, own_scope) is None
    assert shown_names(panel) == [kept] and model.selected == []
    assert text(panel.selection).startswith("Tick rows")
    assert defined(run, kept, "x")  # the row that was not ticked is untouched


def test_a_ticked_row_with_an_action_under_way_is_skipped_and_named(shell, panel, run,
                                                                    unique_name, own_scope):
    a, b = created(shell, panel, unique_name + "a", unique_name + "b")
    run("x = 1", b)
    model = panel.model
    model.restart(a)
    model.act_on("reset", [a, b])
    assert model.wait()
    assert text(panel.message) == ("\u2716 reset 1 instance: %s; %r not reset: wait until "
                                   "restarting %r has finished" % (b, a, a))
    assert not defined(run, b, "x")
    with pytest.raises(ValueError, match="no action 'explode'"):
        model.act_on("explode", [a])
    model.select_all(False)
    model.act_on_selected("reset")
    assert text(panel.message) == "\u2716 no instances selected: tick the rows to act on"


def test_one_message_for_a_batch_whatever_happens():
    batch = Batch("restart", ["a", "b", "c"], skipped=[("d", "wait until resetting 'd' has "
                                                               "finished")])
    batch.ended.append("b")
    assert not batch.finish("a", ("restarted 'a'", "info"))
    assert not batch.finish("c", ("restarting 'c' failed: no instance named 'c'", "error"))
    assert batch.finish("b", ("restarted 'b'", "info"))
    assert batch.summary() == (
        "restarted 2 instances: a and b; the cell running in b was ended; restarting 'c' "
        "failed: no instance named 'c'; 'd' not restarted: wait until resetting 'd' has "
        "finished", "error")
    many = Batch("delete", ["s%02d" % i for i in range(30)])
    for name in sorted(many.pending):
        many.finish(name, ("", "info"))
    assert many.summary() == ("deleted 30 instances: s00, s01, s02, s03, s04, s05, s06 and "
                              "23 more", "info")


# --- the last result ------------------------------------------------------------------

def test_last_result_column(shell, panel, unique_name, own_scope, monkeypatch):
    a, b = created(shell, panel, unique_name + "a", unique_name + "b")
    manager = manager_of(shell)
    assert text(panel.rows[a].result) == "-"
    before = time.time()
    record_result(manager, a, "ok", 0.42)  # as the magics do after each cell
    record_result(manager, b, "timeout", 61)
    assert panel.model.results[a]["status"] == "ok"
    assert before <= panel.model.results[a]["at"] <= time.time()
    assert re.fullmatch(r"\u25cf ok 0\.4 s at \d\d:\d\d:\d\d", text(panel.rows[a].result))
    assert re.fullmatch(r"\u25cf timeout 1m 01s at \d\d:\d\d:\d\d", text(panel.rows[b].result))
    record_result(manager, a, "error", 3.5)  # the last one counts
    assert text(panel.rows[a].result).startswith("\u25cf error 3.5 s")
    with pytest.raises(ValueError, match="one of ok, error, timeout, interrupted, not 'fine'"):
        panel.model.record_result(a, "fine", 1)

    # Kept across refreshes, also for an instance that a refresh under way has not
    # listed (a cell that created it ended meanwhile)...
    later = unique_name + "later"
    listing = manager.statuses

    def statuses():
        rows = listing()
        record_result(manager, later, "ok", 1.0)
        return rows
    monkeypatch.setattr(manager, "statuses", statuses)
    panel.model.refresh()
    monkeypatch.undo()
    assert set(panel.model.results) == {a, b, later}
    # ...and dropped for an instance that is gone, so a new one of that name starts blank.
    panel.model.refresh()
    assert set(panel.model.results) == {a, b}
    panel.model.delete(b)
    assert panel.model.wait()
    assert set(panel.model.results) == {a}


def test_the_cells_of_a_shell_record_their_result_in_the_panel_made_without_one(shell,
                                                                                own_scope):
    from fiddledock_magic._panel_model import close_model_of, model_for
    manager = manager_of(shell)
    close_model_of(manager)  # as before any panel was shown
    record_result(manager, "somebody", "ok", 1.0)  # a model is made to hold it
    model = model_for(manager, shell)
    assert model.results["somebody"]["status"] == "ok"
    assert model._hook is not None  # it refreshes after each cell, as one made with it


# --- each row's menu -------------------------------------------------------------------

def test_row_menus_unfold_one_at_a_time_and_questions_always_show(shell, panel, unique_name,
                                                                  own_scope):
    a, b = created(shell, panel, unique_name + "a", unique_name + "b")
    row_a, row_b = panel.rows[a], panel.rows[b]
    assert row_a.actions.layout.display == "none" == row_b.actions.layout.display
    row_a.b_menu.click()
    assert row_a.actions.layout.display == "flex" and row_a.b_menu.button_style == "info"
    assert row_a.actions.children == (row_a.b_default, row_a.b_restart, row_a.b_reset,
                                      row_a.b_delete)
    row_b.b_menu.click()  # opening another folds the first
    assert row_a.actions.layout.display == "none" and row_b.actions.layout.display == "flex"
    row_b.b_menu.click()
    assert panel.model.menu == "" and row_b.actions.layout.display == "none"
    panel.model.request("delete", a)  # a question shows on its row, menu open or not
    assert row_a.actions.layout.display == "flex" and row_a.ask in row_a.actions.children
    row_a.b_no.click()
    assert row_a.actions.layout.display == "none"


# --- while a cell runs ---------------------------------------------------------------------

TICK_AND_DELETE = WHEN_RUNNING + """
from fiddledock_magic._panel import panel_for
_panel = panel_for(_manager, get_ipython())

def _delete_ticked(names=%(names)r):
    _panel.model.refresh()
    for name in names:
        _panel.rows[name].tick.value = True
    _panel.b_selected["delete"].click()
    _seen["asked"] = _panel.selected_ask.value
    _panel.b_selected_yes["delete"].click()

_when_running(%(running)r, _delete_ticked)
"""


def test_deleting_ticked_rows_ends_the_cell_running_in_one(kernel, unique_name):
    running, idle = unique_name + "a", unique_name + "b"
    for name in (running, idle):
        reply, _ = kernel.execute("%%%%dockerrun %s\nx = 1" % name, timeout=120)
        assert reply["status"] == "ok"
    reply, _ = kernel.execute(TICK_AND_DELETE % {"names": [running, idle], "running": running},
                              timeout=60)
    assert reply["status"] == "ok"
    reply, msgs = kernel.execute("%%%%dockerrun %s\nprint('started', flush=True)\n"
                                 "import time\ntime.sleep(25)\nprint('finished')" % running,
                                 timeout=120)
    assert reply["status"] == "error" and reply["ename"] == "CellEnded"
    error = "\n".join("\n".join(m["content"]["traceback"]) for _, m in msgs
                      if m["msg_type"] == "error")
    assert re.sub(r"\x1b\[[0-9;]*m", "", error) == (
        "FiddleDock: the cell was stopped because instance %r was deleted from the panel; its "
        "variables are gone" % running)
    assert "finished" not in stream_text(msgs)
    reply, msgs = kernel.execute("_panel.model.wait(); print(_seen['asked']); "
                                 "print(_panel.model.message)", timeout=120)
    asked, message = stream_text(msgs).splitlines()
    assert asked == ("Delete 2 instances (%s and %s)? Their state is lost. The cell running "
                     "in %s is ended." % (running, idle, running))
    assert message == ("deleted 2 instances: %s and %s; the cell running in %s was ended"
                       % (running, idle, running))
