"""Panel actions on an instance whose cell is running, through a real kernel.

The rule for restart, reset and delete: the action happens now, the running
cell ends with a message that names the action and who did it, and nothing
is recreated in silence. A kernel runs one request at a time, so the panel's
click comes from a thread that an earlier cell started (as JupyterLab's
comms-over-subshells run a click beside the running cell); it waits until
the cell is running, reads the panel's rows, then clicks through the
panel's model (confirming where the panel asks).
"""

import re

import pytest

from conftest import WHEN_RUNNING, notice_text, stream_text

SLEEPER = ("%%%%dockerrun %s\n"
           "print('started', flush=True)\n"
           "import time\n"
           "time.sleep(25)\n"
           "print('finished')")

CLICK = WHEN_RUNNING + """
from fiddledock_magic._panel_model import model_for
_model = model_for(_manager, get_ipython())

def _click(name=%(name)r, action=%(action)r):
    _model.refresh()  # the panel reads its rows while the cell runs
    _seen["status"] = {row.name: row.status for row in _model.statuses}.get(name)
    _seen["still_running"] = _manager.instances[name].running_cell
    if action == "reset":
        _model.reset(name)
    elif action:  # restart or delete ask first; no action: only look
        _model.request(action, name)
        _seen["asked"] = _model.confirming.get(name)
        _model.confirm(name)

_when_running(%(name)r, _click)
"""

REPORT = """
_model.wait()
_model.refresh()
print('seen:', _seen.get('status'), _seen.get('still_running'), _seen.get('asked'))
print('rows:', sorted((row.name, row.status) for row in _model.statuses))
print('activities:', dict(_model.activities))
print('message:', _model.message_kind, _model.message)
"""


def ok(kernel, code):
    reply, msgs = kernel.execute(code, timeout=120)
    assert reply["status"] == "ok", (reply, stream_text(msgs, "stderr"))
    return stream_text(msgs), stream_text(msgs, "stderr") + notice_text(msgs)


def run_ended_cell(kernel, name, action):
    """Start the click's thread, run the sleeping cell; the cell's reply and output."""
    ok(kernel, CLICK % {"name": name, "action": action})
    reply, msgs = kernel.execute(SLEEPER % name, timeout=120)
    errors = [m["content"] for _, m in msgs if m["msg_type"] == "error"]
    return reply, stream_text(msgs), "\n".join("\n".join(e["traceback"]) for e in errors)


def plain(text):
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# Which container a cell runs in (its id, from where Docker mounted its /etc/hostname):
# the hostname is the instance's name, the same in a new container.
CONTAINER = ("[m.split()[3].split('/')[-2][:12] for m in open('/proc/self/mountinfo') "
             "if ' /etc/hostname ' in m][0]")


@pytest.mark.parametrize("action, done", [("restart", "restarted"), ("delete", "deleted")])
def test_restart_or_delete_ends_the_running_cell_and_says_so(kernel, unique_name, docker_client,
                                                              action, done):
    name = unique_name
    ok(kernel, "%%%%dockerrun %s\nx = 1\nopen('/tmp/kept', 'w').write('here')" % name)
    before = ok(kernel, "%%%%dockerrun %s\nprint(%s)" % (name, CONTAINER))[0]

    reply, out, error = run_ended_cell(kernel, name, action)
    assert reply["status"] == "error"
    assert reply["ename"] == "CellEnded"
    assert plain(error) == ("FiddleDock: the cell was stopped because instance %r was %s "
                            "from the panel; its variables are gone" % (name, done))
    assert "started" in out and "finished" not in out
    assert "Traceback" not in error

    report = ok(kernel, REPORT)[0]
    # The panel read its rows while the cell ran, saw it busy, and asked first.
    assert "seen: busy True %s" % action in report
    assert "activities: {}" in report
    message = report.split("message: ", 1)[1].strip()
    if action == "restart":
        assert message == ("info restarted %r: a new container, its state is lost; the cell "
                           "running in it was ended" % name)
        assert "(%r, 'ready')" % name in report
    else:
        assert message == ("info deleted instance %r and its container; the cell running in "
                           "it was ended" % name)
        assert "rows: []" in report

    # The next cell: a new container, a fresh state; after a delete it says why.
    out, err = ok(kernel, "%%%%dockerrun %s\nimport os\n"
                          "print('x' in globals(), os.path.exists('/tmp/kept'), %s)"
                          % (name, CONTAINER))
    assert out.split()[:2] == ["False", "False"]
    assert out.split()[2] != before.strip()
    if action == "delete":
        assert plain(err).strip() == (
            "[fiddledock] instance %r was deleted from the panel, so this cell runs in a new "
            "instance of that name, with a fresh state" % name)
    else:
        assert err == ""
    # ...and only once.
    assert ok(kernel, "%%%%dockerrun %s\nx = 2" % name)[1] == ""


def test_reset_ends_the_running_cell_and_keeps_the_container(kernel, unique_name,
                                                            docker_client):
    name = unique_name
    ok(kernel, "%%%%dockerrun %s\nx = 1\nopen('/tmp/kept', 'w').write('here')" % name)
    before = ok(kernel, "%%%%dockerrun %s\nprint(%s)" % (name, CONTAINER))[0]

    reply, out, error = run_ended_cell(kernel, name, "reset")
    assert reply["status"] == "error"
    assert reply["ename"] == "CellEnded"
    assert plain(error) == ("FiddleDock: the cell was stopped because instance %r was reset "
                            "from the panel; its variables are gone" % name)
    assert "started" in out and "finished" not in out

    report = ok(kernel, REPORT)[0]
    assert "seen: busy True" in report
    assert "(%r, 'ready')" % name in report
    assert report.split("message: ", 1)[1].strip() == (
        "info reset %r: a fresh namespace in the same container; the cell running in it was "
        "ended" % name)

    # Same container, files kept, namespace fresh, no notice.
    out, err = ok(kernel, "%%%%dockerrun %s\nimport os\n"
                          "print('x' in globals(), os.path.exists('/tmp/kept'), %s)"
                          % (name, CONTAINER))
    assert out.split() == ["False", "True", before.strip()]
    assert err == ""


def test_other_rows_act_while_a_cell_runs_and_leave_it_running(kernel, unique_name):
    busy, other = unique_name, unique_name + "b"
    ok(kernel, "%%%%dockerrun %s\nx = 1" % busy)
    ok(kernel, "%%%%dockerrun %s\ny = 1" % other)
    ok(kernel, CLICK % {"name": busy, "action": ""} + """
def _other(name=%r):
    while not _seen.get("status"):
        time.sleep(0.05)
    _model.reset(name)
    _seen["other_busy"] = _model.busy(name)
    _model.wait()
    _seen["other"] = _model.message
    _seen["cell_still_running"] = _manager.instances[%r].running_cell

threading.Thread(target=_other, daemon=True).start()
""" % (other, busy))
    reply, msgs = kernel.execute("%%%%dockerrun %s\nimport time\ntime.sleep(8)\nprint('finished')"
                                 % busy, timeout=120)
    assert reply["status"] == "ok"
    assert stream_text(msgs) == "finished\n"
    out = ok(kernel, "_model.wait(); print(_seen)")[0]
    assert "'other_busy': True" in out
    assert "'other': \"reset %r: a fresh namespace in the same container\"" % other in out
    assert "'cell_still_running': True" in out  # done while the cell ran, which then went on
    # The reset row lost its namespace; the running cell's instance kept its own.
    assert ok(kernel, "%%%%dockerrun %s\nprint('y' in globals())" % other)[0] == "False\n"
    assert ok(kernel, "%%%%dockerrun %s\nprint(x)" % busy)[0] == "1\n"
