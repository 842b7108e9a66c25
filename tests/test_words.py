"""What a teacher reads: FiddleDock's errors and usage errors in one style (one short
line, "FiddleDock:" in bold, no class name, no traceback) in a notebook and in a
terminal; colours that keep their contrast; notices that wrap between words."""

import re
import threading
import uuid

import pytest

from conftest import notice_text, ok

STYLE = "\x1b[1mFiddleDock:\x1b[0m "
ANSI = re.compile(r"\x1b\[[0-9;]*m")
COLOUR = re.compile(r"\x1b\[[0-9;]*3[0-9]m")  # a foreground colour: any 30-39


def name():
    return "w%s" % uuid.uuid4().hex[:6]


def one_line(reply, msgs, ename):
    """The cell failed with one short line in FiddleDock's style; its text."""
    assert reply["status"] == "error" and reply["ename"] == ename, reply
    line, = reply["traceback"]
    assert line.startswith(STYLE), repr(line)
    assert not COLOUR.search(line), "the frontend's own text colour: %r" % line
    text = ANSI.sub("", line)
    assert "\n" not in text and len(text) < 400, text
    assert ename not in text and "Traceback" not in text and "fiddledock_magic" not in text
    # IPython's own UsageError style (plain "UsageError: ..." on stderr) is not used.
    assert not [m for _, m in msgs if m["msg_type"] == "stream"
                and "UsageError" in m["content"]["text"]]
    return text


# --- one style through a real kernel ----------------------------------------------------

def test_usage_errors_and_fiddledock_errors_look_alike_in_a_notebook(kernel, docker_client):
    n = name()
    seen = {}
    for ename, code in (
            ("UsageError", "%dockerrun lst"),
            ("UsageError", "%%%%dockerrun %s --timeout -1\npass" % n),
            ("UsageError", "%%dockerrun create %s --memory lots" % n),
            ("InstanceNotFound", "%%dockerrun delete %s" % n)):
        seen[code] = one_line(*kernel.execute(code), ename=ename)
    ok(kernel.execute("%%%%dockerrun %s\nx = 1" % n)[0])
    for ename, code in (
            ("InstanceConflict", "%%%%dockerrun %s --image fiddledock-other:1\npass" % n),
            ("CellKilled", "%%%%dockerrun %s\nimport os\nos._exit(3)" % n)):
        seen[code] = one_line(*kernel.execute(code), ename=ename)
    for text in seen.values():
        print(text)
    assert "did you mean 'list'?" in seen["%dockerrun lst"]
    killed = seen["%%%%dockerrun %s\nimport os\nos._exit(3)" % n]
    assert "variables and imports are gone" in killed and "worker" not in killed
    assert "namespace" not in killed


def test_an_instance_stopped_under_its_cell_is_one_plain_line(kernel, docker_client):
    n = name()
    ok(kernel.execute("%%%%dockerrun %s\npass" % n)[0])
    container, = docker_client.containers.list(filters={"label": "fiddledock.instance=%s" % n})
    killer = threading.Timer(1.5, container.remove, kwargs={"force": True})
    killer.start()
    reply, msgs = kernel.execute("%%%%dockerrun %s\nimport time\ntime.sleep(30)" % n)
    killer.join()
    text = one_line(reply, msgs, "InstanceLost")
    assert text.startswith("FiddleDock: instance %r: it " % n), text
    assert "The next cell starts it again from scratch" in text
    assert "removing" not in text and "fresh state" not in text
    reply, msgs = kernel.execute("%%%%dockerrun %s\nprint('back')" % n)
    ok(reply)
    assert "previous state is lost" in notice_text(msgs)


def test_no_raise_shows_the_same_line_without_failing(kernel):
    n = name()
    ok(kernel.execute("%%%%dockerrun %s\npass" % n)[0])
    reply, msgs = kernel.execute("%%%%dockerrun %s --no-raise\nimport os\nos._exit(3)" % n)
    ok(reply)
    err = "".join(m["content"]["text"] for _, m in msgs
                  if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
    assert err.startswith(STYLE) and err.count("\n") == 1, repr(err)


def test_the_same_style_in_a_terminal_shell(shell, capsys):
    capsys.readouterr()
    shell.run_cell("%dockerrun lst")
    shell.run_cell("%%dockerrun delete %s" % name())
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) == 2, lines
    assert all(line.startswith(STYLE) for line in lines), lines
    assert "UsageError" not in "".join(lines) and "InstanceNotFound" not in "".join(lines)


# --- contrast (WCAG 2.x) -----------------------------------------------------------------

def luminance(colour):
    """Relative luminance of '#rrggbb'."""
    def channel(c):
        c /= 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a, b):
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# JupyterLab's light theme: an error or stderr output's pink, its ANSI yellow and red.
LAB_ERROR_BACKGROUND, LAB_YELLOW, LAB_RED = "#ffdddd", "#ddb62b", "#e75c58"


def test_the_contrast_measure_fails_what_was_unreadable():
    # What notices and errors looked like before: yellow or red text on the pink.
    assert contrast(LAB_YELLOW, LAB_ERROR_BACKGROUND) < 2.0
    assert contrast(LAB_RED, LAB_ERROR_BACKGROUND) < 3.0
    assert round(contrast("#000000", "#ffffff"), 1) == 21.0


def test_notices_and_status_colours_have_a_contrast_of_at_least_4_5():
    from fiddledock_magic._panel_rows import RESULT_COLORS, STATUS_COLORS
    from fiddledock_magic._render import NOTICE_COLORS
    assert contrast(NOTICE_COLORS["text"], NOTICE_COLORS["background"]) >= 4.5
    assert contrast(NOTICE_COLORS["edge"], NOTICE_COLORS["background"]) >= 3.0  # not text
    for status, colour in list(STATUS_COLORS.items()) + list(RESULT_COLORS.items()):
        assert contrast(colour, "#ffffff") >= 4.5, (status, colour)  # text on the panel's white


def test_a_notice_is_one_escaped_block_that_wraps_between_words():
    from fiddledock_magic._render import notice_html
    block = notice_html("a <script>x</script> & 'quoted' notice")
    assert block.startswith("<div class='fiddledock-notice' style='")
    assert "<script>" not in block and "&lt;script&gt;" in block and "&#x27;quoted&#x27;" in block
    assert "word-break:normal" in block and "white-space:pre-wrap" in block


@pytest.mark.parametrize("status", ["ready", "busy", "not connected", "stopped", "crashed"])
def test_every_status_has_a_colour(status):
    from fiddledock_magic._panel_rows import STATUS_COLORS
    assert status in STATUS_COLORS
