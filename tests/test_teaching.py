"""What a teacher sees: tracebacks that point at the notebook's own cell and line,
a note when a cell creates an instance, help and "did you mean" for typos."""

import re
import uuid

from conftest import notice_text, ok, stream_text

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(lines):
    return ANSI.sub("", "\n".join(lines))


def cell(kernel, code):
    """Run code; (reply, its execution count, the error's traceback text, stdout+stderr)."""
    reply, msgs = kernel.execute(code)
    errors = [m["content"] for _, m in msgs if m["msg_type"] == "error"]
    text = "".join(m["content"]["text"] for _, m in msgs if m["msg_type"] == "stream")
    return reply, reply["execution_count"], errors, text


def name():
    return "t%s" % uuid.uuid4().hex[:6]


def test_a_traceback_names_the_notebook_cell_and_the_editor_line(kernel):
    n = name()
    ok(cell(kernel, "%%%%dockerrun %s\ndef half(x):\n    return 1 / x\n" % n)[0])
    reply, count, errors, _ = cell(kernel, "%%%%dockerrun %s\na = 1\nb = 2\nhalf(0)\nc = 3\n" % n)
    assert reply["status"] == "error" and reply["ename"] == "ZeroDivisionError"
    lines = errors[0]["traceback"]
    assert any("\x1b[" in line for line in lines), "drawn with IPython's colours"
    text = plain(lines)
    # The failing cell: the %%dockerrun line is line 1, so half(0) is on line 4.
    assert "Cell In[%d] (instance %s), line 4" % (count, n) in text
    assert "----> 4 half(0)" in text
    assert "      3 b = 2" in text and "      5 c = 3" in text
    # The function defined in the earlier cell: that cell's number, its editor line.
    assert "Cell In[%d] (instance %s), line 3, in half()" % (count - 1, n) in text
    assert "----> 3     return 1 / x" in text
    assert text.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "<cell" not in text and "fiddledock" not in text
    # The last line reads like a local one: the name coloured, the message plain.
    assert not lines[-1].startswith("\x1b[0;31m")


def test_a_syntax_error_points_at_the_editor_line(kernel):
    n = name()
    reply, count, errors, _ = cell(kernel, "%%%%dockerrun %s\nx = 1\ny = (2 +\n" % n)
    assert reply["ename"] == "SyntaxError"
    text = plain(errors[0]["traceback"])
    assert "Cell In[%d] (instance %s), line 3" % (count, n) in text
    assert "----> 3 y = (2 +" in text and "ERROR" not in text
    assert "<cell" not in text


def test_a_timeout_shows_where_the_cell_was_in_editor_lines(kernel):
    n = name()
    reply, count, errors, _ = cell(
        kernel, "%%%%dockerrun %s --timeout 2\nimport time\nwhile True:\n    time.sleep(0.1)\n" % n)
    assert reply["status"] == "error"
    text = plain(errors[0]["traceback"])
    assert "Cell In[%d] (instance %s), line 4" % (count, n) in text
    assert "timed out" in text


def test_traceback_frames_from_an_instance_cannot_colour_or_break_the_page():
    import pytest
    from fiddledock_magic._events import BadEvent, read_event
    frame = {"cell": "In[2]\x1b[31m", "line": 3, "name": "f",
             "lines": [[3, "\tx = '\x1b[2J'"]]}
    event = read_event(({"type": "done", "status": "error", "error": {
        "ename": "E", "evalue": "v", "traceback": [], "frames": [frame]}}, b""))
    shown = event.error["frames"][0]
    assert "\x1b" not in shown["cell"] and shown["lines"] == [(3, "    x = '?[2J'")]
    for bad in ("frames", ["frame"], [dict(frame, line="3")], [dict(frame, lines=[[1]])],
                [frame] * 101):
        with pytest.raises(BadEvent):
            read_event(({"type": "done", "status": "error", "error": {
                "ename": "E", "traceback": [], "frames": bad}}, b""))


def test_a_cell_that_creates_its_instance_says_so_once(kernel):
    typo = name()
    reply, msgs = kernel.execute("%%%%dockerrun %s\nprint('hi')" % typo)
    ok(reply)
    assert notice_text(msgs) == "[fiddledock] created new instance '%s'\n" % typo
    assert [m["msg_type"] for _, m in msgs if m["msg_type"] in ("stream", "display_data")] == [
        "display_data", "stream"]  # the notice first, then the cell's output
    reply, msgs = kernel.execute("%%%%dockerrun %s\nprint('again')" % typo)
    ok(reply)
    assert notice_text(msgs) == "" and stream_text(msgs) == "again\n"


# --- help and typos ----------------------------------------------------------------------

def test_help_lists_each_subcommand_with_its_options_and_an_example(kernel):
    reply, _, _, text = cell(kernel, "%dockerrun help")
    ok(reply)
    assert text.startswith("%%dockerrun [NAME...] [--timeout SECONDS]")
    assert "::" not in text and "%%dockerrun SUBCOMMAND" not in text
    assert "%dockerrun SUBCOMMAND: manage this notebook's instances." in text
    create = text.split("%dockerrun create NAME... [options]\n", 1)[1].split("\n\n", 1)[0]
    assert "    --memory MEMORY        Memory limit" in create
    assert "    e.g. %dockerrun create alice --memory 1g --cpus 0.5" in create
    for sub in ("list", "delete", "restart", "reset", "interrupt", "use", "cleanup", "pool",
                "put", "get", "panel"):
        section = text.split("\n%dockerrun " + sub, 1)[1].split("\n\n", 1)[0]
        assert "    e.g. %dockerrun " + sub in section, section


def test_the_cell_magics_docstring_has_no_markup(kernel):
    reply = kernel.kc.execute_interactive("%%dockerrun?", timeout=30, output_hook=lambda m: None)
    found = kernel.kc.inspect("%%dockerrun", 11, detail_level=0, reply=True, timeout=30)
    doc = ANSI.sub("", found["content"]["data"]["text/plain"])
    assert reply["content"]["status"] == "ok"
    assert "Run the cell as Python in a Docker container" in doc
    assert "``" not in doc and "::" not in doc


def usage_error(kernel, code):
    reply, _, _, _ = cell(kernel, code)
    assert reply["status"] == "error" and reply["ename"] == "UsageError", reply
    return reply["evalue"]


def test_typos_get_a_did_you_mean(kernel):
    assert "did you mean 'list'?" in usage_error(kernel, "%dockerrun lst")
    assert "did you mean '--memory'?" in usage_error(kernel, "%dockerrun create x --memroy 1g")
    assert "did you mean '--timeout'?" in usage_error(kernel, "%%dockerrun x --timout 5\npass")
    _, _, _, text = cell(kernel, "%dockerrun list")
    assert "no instances" in text  # the typos created nothing


def test_deleting_an_unknown_name_lists_the_names_that_exist(kernel):
    n = name()
    ok(cell(kernel, "%%%%dockerrun %s\npass" % n)[0])
    reply, _, errors, _ = cell(kernel, "%%dockerrun delete %sx" % n)
    assert reply["status"] == "error" and reply["ename"] == "InstanceNotFound"
    line, = errors[0]["traceback"]
    assert ("no instance named '%sx'; did you mean '%s'? This notebook's instances: %s"
            % (n, n, n)) in line


def test_the_cells_machine_is_named_after_its_instance(kernel):
    n = name()
    reply, _, _, text = cell(kernel, "%%%%dockerrun %s\nimport socket\nprint(socket.gethostname())"
                             % n)
    ok(reply)
    assert text.splitlines()[-1] == n


def test_a_pooled_instance_has_a_neutral_hostname(own_scope, shell, run, line_magic):
    """Made before its name is known (a hostname cannot change later): 'sandbox'."""
    from fiddledock_magic._extension import manager_of
    pool = manager_of(shell).pool
    line_magic("pool 1")
    assert pool.wait(90), pool.describe()
    n = name()
    _, out, _ = run("import socket\nprint(socket.gethostname())", n)
    assert out == "sandbox\n"
    line_magic("pool 0")
    _, out, _ = run("import socket\nprint(socket.gethostname())", n + "b")
    assert out == n + "b\n"  # not from the pool: its own name
