"""%%dockerrun against a real engine: what a user sees beneath a cell."""

import re
import time

import pytest
from IPython.core.error import UsageError

from conftest import ok
from fiddledock_magic import CellError


def test_state_persists_between_cells(run, unique_name):
    run("x = 21\nimport math", unique_name)
    _, out, _ = run("print(x * 2, math.pi > 3)", unique_name)
    assert out == "42 True\n"


def test_stdout_and_stderr_are_kept_apart_in_order(run, unique_name, capsys):
    code = ("import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')\n"
            "sys.stderr.write('four\\n')")
    _, out, err = run(code, unique_name)
    assert out == "one\nthree\n"
    assert err == "two\nfour\n"


def test_child_process_output_is_captured_in_order(run, unique_name):
    code = ("import os, subprocess\nprint('before', flush=True)\n"
            "os.system('echo from-system; echo sys-err >&2')\n"
            "subprocess.run(['sh', '-c', 'echo from-subprocess'])\nprint('after')")
    _, out, err = run(code, unique_name)
    assert out == "before\nfrom-system\nfrom-subprocess\nafter\n"
    assert err == "sys-err\n"


def test_background_child_does_not_hold_the_cell(run, unique_name):
    start = time.monotonic()
    _, out, _ = run("import subprocess\nsubprocess.Popen(['sleep', '30'])\nprint('done')", unique_name)
    assert out == "done\n"
    assert time.monotonic() - start < 10


def test_exception_shows_the_container_traceback_and_fails(run, unique_name):
    with pytest.raises(CellError) as info:
        run("def f():\n    return 1 / 0\nf()", unique_name)
    err = info.value
    assert type(err).__name__ == "ZeroDivisionError"
    text = "\n".join(err._render_traceback_())
    assert "return 1 / 0" in text and "ZeroDivisionError: division by zero" in text
    assert "fiddledock" not in text  # no frames of the magic or the agent


def test_no_raise_shows_the_error_without_failing(run, unique_name):
    value, _, err = run("raise ValueError('nope')", unique_name, "--no-raise")
    assert value is None
    assert "ValueError: nope" in err


def test_namespace_survives_an_exception(run, unique_name):
    run("kept = 'yes'", unique_name)
    with pytest.raises(CellError):
        run("raise RuntimeError", unique_name)
    _, out, _ = run("print(kept)", unique_name)
    assert out == "yes\n"


def test_unicode_and_invalid_utf8(run, unique_name):
    code = ("import sys, os\nprint('héllo ✓ 日本')\nsys.stdout.flush()\n"
            "os.write(1, b'bad:\\xff\\xfe end\\n')\nsys.stdout.buffer.write(b'split:\\xe2\\x9c')\n"
            "sys.stdout.buffer.write(b'\\x93\\n')\nNone")
    _, out, _ = run(code, unique_name)
    assert "héllo ✓ 日本\n" in out
    assert "bad:\ufffd\ufffd end\n" in out
    assert "split:✓\n" in out  # a character split across writes stays whole


def test_output_without_trailing_newline(run, unique_name):
    _, out, _ = run("print('no newline', end='')", unique_name)
    assert out == "no newline"


def test_last_expression_value_is_returned(run, unique_name):
    value, _, _ = run("6 * 7", unique_name)
    assert repr(value) == "42"
    value, _, _ = run("6 * 7;", unique_name)
    assert value is None


def test_hundred_quick_cells_in_order(run, unique_name):
    outs = [run("print(%d)" % i, unique_name)[1] for i in range(100)]
    assert outs == ["%d\n" % i for i in range(100)]


def test_four_megabyte_cell_source(run, unique_name):
    payload = "x" * (4 * 1024 * 1024)
    cell = "s = %r\nprint(len(s))" % payload
    _, out, _ = run(cell, unique_name)
    assert out == "%d\n" % len(payload)


def test_instances_are_isolated(run, unique_name):
    a, b = unique_name + "a", unique_name + "b"
    run("secret = 1\nopen('/home/sandbox/mine.txt', 'w').write('a')", a)
    _, out, _ = run("print('secret' in globals())\nimport os\n"
                    "print(os.path.exists('/home/sandbox/mine.txt'))", b)
    assert out == "False\nFalse\n"


def test_notebook_files_are_not_visible(run, unique_name, tmp_path):
    marker = tmp_path / "host-marker-file.txt"
    marker.write_text("host")
    _, out, _ = run("import os\nprint(os.path.exists(%r))\nprint(os.path.exists('/work'))"
                    % str(marker), unique_name)
    assert out == "False\nFalse\n"


def test_runs_as_non_root_without_network(run, unique_name):
    code = ("import os, socket\nprint(os.getuid(), os.geteuid())\n"
            "print(sorted(n for _, n in socket.if_nameindex()))")
    _, out, _ = run(code, unique_name)
    assert out == "1000 1000\n['lo']\n"


def test_container_name_contains_the_instance_name(run, unique_name, docker_client):
    run("pass", unique_name)
    names = [c.name for c in docker_client.containers.list(filters={"label": "fiddledock=1"})]
    assert any(unique_name in n for n in names)


@pytest.mark.parametrize("line, message", [
    ("--timeout abc", "--timeout"),
    ("--bogus", "unrecognized"),
    ("bad/name", "instance names"),
    ("--timeout -1", "--timeout"),
    ("a b/c", "instance names"),  # several names: one bad one refuses the line
])
def test_bad_arguments_are_usage_errors(shell, line, message):
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("dockerrun", line, "print(1)")
    assert message in str(info.value)


def test_help_is_real(shell):
    doc = shell.find_cell_magic("dockerrun").__doc__
    assert "--timeout" in doc and "--no-raise" in doc and "--reset" in doc


def test_reset_gives_a_fresh_namespace(run, unique_name):
    run("y = 1", unique_name)
    _, out, _ = run("print('y' in globals())", unique_name, "--reset")
    assert out == "False\n"


def test_image_clash_is_a_clear_error(run, unique_name):
    from fiddledock_magic import InstanceConflict
    run("pass", unique_name)
    with pytest.raises(InstanceConflict, match="already runs image"):
        run("pass", unique_name, "--image python:3.12-slim")


def test_output_streams_while_the_cell_runs(kernel):
    """Through a real kernel: two prints 2 s apart arrive as two messages 2 s apart."""
    code = "%%dockerrun\nimport time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')"
    kernel.execute("%%dockerrun\npass", timeout=120)  # create the instance first
    reply, msgs = kernel.execute(code)
    assert reply["status"] == "ok", reply
    streams = [(t, m["content"]["text"]) for t, m in msgs if m["msg_type"] == "stream"]
    first = [t for t, text in streams if "first" in text]
    second = [t for t, text in streams if "second" in text]
    assert first and second, streams
    assert 1.5 < second[0] - first[0] < 3.5


def test_error_fails_the_kernel_cell_with_the_container_exception(kernel):
    reply, msgs = kernel.execute("%%dockerrun\n{}['missing']", timeout=120)
    assert reply["status"] == "error"
    assert reply["ename"] == "KeyError"
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(reply["traceback"]))  # IPython's colours
    assert "KeyError: 'missing'" in tb and "_instance.py" not in tb


def test_interrupted_traceback_shows_only_the_cells_frames(run, unique_name):
    from fiddledock_magic import CellTimeout
    with pytest.raises(CellTimeout) as info:
        run("import time\nwhile True:\n    time.sleep(0.01)", unique_name, "--timeout 1")
    text = "\n".join(info.value._render_traceback_())
    assert "KeyboardInterrupt" in text and "time.sleep(0.01)" in text
    assert "fiddledock_agent" not in text


def test_python_and_child_output_keep_their_order(run, unique_name):
    code = ("import os, subprocess\nfor i in range(30):\n    print('a%d' % i)\n"
            "    os.write(1, b'b%d\\n' % i)\n    subprocess.run(['echo', 'c%d' % i])")
    _, out, _ = run(code, unique_name)
    assert out == "".join("a%d\nb%d\nc%d\n" % (i, i, i) for i in range(30))


def test_stdout_and_stderr_interleave_in_order_through_a_kernel(kernel):
    ok(kernel.execute("%%dockerrun\npass", timeout=120)[0])  # created (a line of its own)
    code = ("%%dockerrun\nimport sys\nfor i in range(3):\n    print('out', i)\n"
            "    print('err', i, file=sys.stderr)")
    reply, msgs = kernel.execute(code, timeout=120)
    assert reply["status"] == "ok"
    seen = [(m["content"]["name"], line) for _, m in msgs if m["msg_type"] == "stream"
            for line in m["content"]["text"].splitlines()]
    assert seen == [(n, "%s %d" % (w, i)) for i in range(3)
                    for n, w in (("stdout", "out"), ("stderr", "err"))]
