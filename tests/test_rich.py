"""Rich output, plots, input() and terminal output: a container cell that feels local.

Most checks go through a real ipykernel (jupyter_client), as a notebook sees
it: the iopub messages. The sanitizer is also checked on its own with the
usual attack payloads, since it is the boundary between a container and
the notebook page.
"""

import base64
import json
import time
import uuid

import pytest

from conftest import Kernel, _remove_scope, is_notice, notice_text, stream_text
from fiddledock_magic._safety import safe_bundle, sanitize_html, sanitize_markdown

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def k(docker_client, default_image):
    """One kernel (and one instance) for the module: these tests only add state."""
    scope = "pytest-rich-%s" % uuid.uuid4().hex[:8]
    kernel = Kernel(scope)
    reply, _ = kernel.execute("%%dockerrun rich\npass", timeout=120)
    assert reply["status"] == "ok"
    yield kernel
    kernel.shutdown()
    _remove_scope(docker_client, scope)


def cell(k, code, **kwargs):
    reply, msgs = k.execute("%%dockerrun rich\n" + code, **kwargs)
    return reply, [m for _, m in msgs]


def outputs(msgs, *kinds):
    kinds = kinds or ("display_data", "execute_result", "update_display_data")
    return [m for m in msgs if m["msg_type"] in kinds and not is_notice(m)]


# --- Out[n] ---------------------------------------------------------------------
def test_last_expression_is_the_cells_value(k):
    reply, msgs = cell(k, "6 * 7")
    assert reply["status"] == "ok"
    [result] = outputs(msgs, "execute_result")
    assert result["content"]["data"] == {"text/plain": "42"}
    assert result["content"]["execution_count"] == reply["execution_count"]


@pytest.mark.parametrize("code", ["None", "6 * 7;", "6 * 7;  # a comment", "x = 5",
                                  "print('printed')"])
def test_none_assignments_and_semicolons_show_no_value(k, code):
    _, msgs = cell(k, code)
    assert outputs(msgs, "execute_result") == []


def test_value_reprs_are_rich_and_underscore_holds_the_last_value(k):
    _, msgs = cell(k, "class R:\n    def _repr_html_(self):\n        return '<i>rich</i>'\n"
                      "    def __repr__(self):\n        return 'R()'\nR()")
    [result] = outputs(msgs, "execute_result")
    assert result["content"]["data"] == {"text/html": "<i>rich</i>", "text/plain": "R()"}
    _, msgs = cell(k, "print(repr(_))")
    assert stream_text([(0, m) for m in msgs]) == "R()\n"


def test_long_containers_are_pretty_printed(k):
    _, msgs = cell(k, "{'key%d' % i: list(range(5)) for i in range(6)}")
    text = outputs(msgs, "execute_result")[0]["content"]["data"]["text/plain"]
    assert text.splitlines()[0] == "{'key0': [0, 1, 2, 3, 4],"  # one item a line, in order


# --- display() and the repr methods --------------------------------------------------
ALL_REPRS = r'''
import base64, json
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
class Everything:
    def _repr_html_(self): return "<p onclick='steal()'>html <script>steal()</script></p>"
    def _repr_markdown_(self): return "**markdown**"
    def _repr_svg_(self): return "<svg xmlns='http://www.w3.org/2000/svg'><script>steal()</script><circle r='4'/></svg>"
    def _repr_png_(self): return PNG
    def _repr_jpeg_(self): return b"\xff\xd8\xff\xe0fake-jpeg"
    def _repr_latex_(self): return r"$\frac{1}{2}$"
    def _repr_json_(self): return {"a": [1, 2]}
    def _repr_javascript_(self): return "steal()"
class Bundle:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return ({"text/plain": "bundle!", "text/html": "<b>bundle</b>",
                 "application/vnd.jupyter.widget-view+json": {"model_id": "teacher-widget"}},
                {"text/html": {"isolated": False}})
class OnlySvg:
    def _repr_svg_(self): return "<svg xmlns='http://www.w3.org/2000/svg' onload='steal()'><rect width='3' height='3'/></svg>"
display(Everything(), Bundle(), OnlySvg())
'''


def test_display_honours_every_repr_method_and_keeps_only_safe_data(k):
    reply, msgs = cell(k, ALL_REPRS)
    assert reply["status"] == "ok"
    everything, bundle, only_svg = [m["content"] for m in outputs(msgs, "display_data")]
    data = everything["data"]
    assert set(data) == {"text/html", "text/markdown", "image/png", "image/jpeg", "text/latex",
                         "application/json", "text/plain"}
    assert data["text/html"] == "<p>html </p>"  # handler and script gone
    assert data["text/markdown"] == "**markdown**"
    assert base64.b64decode(data["image/png"]).startswith(PNG_MAGIC)
    assert base64.b64decode(data["image/jpeg"]) == b"\xff\xd8\xff\xe0fake-jpeg"
    assert data["text/latex"] == r"$\frac{1}{2}$"
    assert data["application/json"] == {"a": [1, 2]}
    assert bundle["data"] == {"text/plain": "bundle!", "text/html": "<b>bundle</b>"}
    assert bundle["metadata"] == {"text/html": {"isolated": False}}
    # SVG only ever reaches the page as an image, where its script cannot run.
    html = only_svg["data"]["text/html"]
    assert html.startswith('<img src="data:image/svg+xml;base64,')
    svg = base64.b64decode(html.split("base64,")[1].split('"')[0]).decode()
    assert "<rect" in svg and "image/svg+xml" not in only_svg["data"]


def test_html_tables_render_as_tables(k):
    """What pandas sends for a DataFrame: the table stays, its <style> goes."""
    code = '''
class FrameLike:
    def _repr_html_(self):
        return """<div>
<style scoped>.dataframe tbody tr th { vertical-align: top; }</style>
<table border="1" class="dataframe">
  <thead><tr style="text-align: right;"><th></th><th>n</th><th>n squared</th></tr></thead>
  <tbody><tr><th>0</th><td>5</td><td>25</td></tr></tbody>
</table>
</div>"""
FrameLike()'''
    _, msgs = cell(k, code)
    html = outputs(msgs, "execute_result")[0]["content"]["data"]["text/html"]
    assert '<table border="1" class="dataframe">' in html
    assert '<tr style="text-align:right">' in html or '<tr style="text-align: right;">' in html
    assert "<th>n squared</th>" in html and "<td>25</td>" in html
    assert "<style" not in html and "vertical-align" not in html


def test_ipython_display_works_in_the_container(k):
    code = ("from IPython.display import display, HTML, Markdown, Image, SVG, JSON, Latex, "
            "clear_output\n"
            "import base64\n"
            "png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==')\n"
            "open('/tmp/dot.png', 'wb').write(png)\n"
            "display(HTML('<b>hi</b>'), Markdown('*md*'), Image(filename='/tmp/dot.png'),\n"
            "        Image(data=png, width=20), JSON({'k': 1}), Latex('$x$'))")
    reply, msgs = cell(k, code)
    assert reply["status"] == "ok", reply
    shown = [m["content"] for m in outputs(msgs, "display_data")]
    assert shown[0]["data"]["text/html"] == "<b>hi</b>"
    assert shown[1]["data"]["text/markdown"] == "*md*"
    assert base64.b64decode(shown[2]["data"]["image/png"]).startswith(PNG_MAGIC)
    assert shown[3]["metadata"] == {"image/png": {"width": 20}}
    assert shown[4]["data"]["application/json"] == {"k": 1}
    assert shown[5]["data"]["text/latex"] == "$x$"


def test_display_handles_update_in_place_and_clear_output_clears(k):
    code = ("h = display('first', display_id=True)\nh.update('second')\n"
            "print('before clear', flush=True)\nfrom IPython.display import clear_output\n"
            "clear_output(wait=True)\nprint('after clear')")
    _, msgs = cell(k, code)
    first = outputs(msgs, "display_data")[0]["content"]
    update = outputs(msgs, "update_display_data")[0]["content"]
    display_id = first["transient"]["display_id"]
    assert display_id.startswith("fiddledock-")  # a container can only address its own displays
    assert update["transient"]["display_id"] == display_id
    assert update["data"]["text/plain"] == "'second'"
    assert [m["content"]["wait"] for m in msgs if m["msg_type"] == "clear_output"] == [True]


def test_a_broken_repr_method_does_not_fail_the_cell(k):
    code = ("class Broken:\n    def _repr_html_(self):\n        raise ValueError('bad html')\n"
            "    def __repr__(self):\n        return 'Broken()'\nBroken()")
    reply, msgs = cell(k, code)
    assert reply["status"] == "ok"
    assert outputs(msgs, "execute_result")[0]["content"]["data"] == {"text/plain": "Broken()"}
    assert "_repr_html_ of Broken failed: ValueError" in stream_text([(0, m) for m in msgs],
                                                                      "stderr")


def test_a_class_is_shown_by_its_repr(k):
    _, msgs = cell(k, "class WithRepr:\n    def _repr_html_(self):\n        return '<b>x</b>'\n"
                      "WithRepr")
    data = outputs(msgs, "execute_result")[0]["content"]["data"]
    assert data == {"text/plain": "<class '__main__.WithRepr'>"}


def test_rich_output_is_bounded(k):
    """One huge output is refused; a display loop stops at the cell's budget."""
    reply, msgs = cell(k, "display('x' * 17_000_000)\ndisplay('small')")
    assert reply["status"] == "ok"
    assert [m["content"]["data"]["text/plain"] for m in outputs(msgs)] == ["'small'"]
    # said by the container's own worker, on the cell's stderr
    assert "an output of 17.0 MB was not shown" in stream_text([(0, m) for m in msgs], "stderr")
    start = time.monotonic()
    reply, msgs = cell(k, "for i in range(5):\n    display(str(i) * 15_000_000)\nprint('done')")
    assert reply["status"] == "ok" and time.monotonic() - start < 30
    assert [m["content"]["data"]["text/plain"][:2] for m in outputs(msgs)] == ["'0", "'1", "'2"]
    err = notice_text([(0, m) for m in msgs])
    assert err.count("rich output truncated") == 1


# --- matplotlib ----------------------------------------------------------------------
def pngs(msgs, kind="display_data"):
    found = []
    for m in outputs(msgs, kind):
        if "image/png" in m["content"]["data"]:
            found.append(base64.b64decode(m["content"]["data"]["image/png"]))
    return found


def test_plt_show_sends_a_png_and_closes_the_figure(k):
    reply, msgs = cell(k, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\n"
                          "print('before show', flush=True)\nplt.show()\nprint('after show')")
    assert reply["status"] == "ok"
    images = pngs(msgs)
    assert len(images) == 1 and images[0].startswith(PNG_MAGIC) and len(images[0]) > 5000
    kinds = [m["msg_type"] for m in msgs if m["msg_type"] in ("stream", "display_data")]
    assert kinds.index("display_data") > 0  # the plot comes between the two prints
    assert "Agg" not in stream_text([(0, m) for m in msgs], "stderr")  # no non-GUI warning
    _, msgs = cell(k, "print(plt.get_fignums())")
    assert pngs(msgs) == [] and stream_text([(0, m) for m in msgs]) == "[]\n"


def test_figures_left_open_show_once_at_the_end(k):
    _, msgs = cell(k, "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.bar(['a', 'b'], [1, 2])\n"
                      "plt.figure()\nplt.scatter([1], [1])\nprint('end of code')")
    assert len(pngs(msgs)) == 2
    _, msgs = cell(k, "pass")
    assert pngs(msgs) == []  # closed: they do not come back


def test_a_figure_as_the_value_is_shown_once(k):
    _, msgs = cell(k, "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
                      "ax.plot([0, 1])\nfig")
    assert len(pngs(msgs, "execute_result")) == 1
    assert pngs(msgs, "display_data") == []


def test_matplotlib_and_ipython_are_not_imported_until_the_user_does(k):
    # A fresh namespace (new worker): nothing was imported on the user's behalf.
    reply, msgs = k.execute("%%dockerrun rich --reset\nimport sys\n"
                            "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'IPython'))))")
    assert stream_text(msgs) == "[]\n"


# --- input() -----------------------------------------------------------------------
def test_input_is_answered_through_the_stdin_channel(k):
    asked = []

    def answer(request):
        asked.append(request)
        return "Ada" if not request["password"] else "s3cret"

    reply, msgs = cell(k, "name = input('Your name? ')\nimport getpass\npw = getpass.getpass()\n"
                          "print('hello', name, len(pw))",
                       allow_stdin=True, stdin_handler=answer)
    assert reply["status"] == "ok"
    assert asked == [{"prompt": "Your name? ", "password": False},
                     {"prompt": "Password: ", "password": True}]
    assert stream_text([(0, m) for m in msgs]) == "hello Ada 6\n"


def test_input_without_stdin_fails_at_once_with_a_clear_error(k):
    start = time.monotonic()
    reply, msgs = cell(k, "print('asking')\nname = input('Your name? ')", allow_stdin=False)
    elapsed = time.monotonic() - start
    assert reply["status"] == "error" and reply["ename"] == "EOFError"
    assert "cannot answer input requests" in "\n".join(reply["traceback"])
    assert elapsed < 5, elapsed
    _, msgs = cell(k, "print('still here')")
    assert stream_text([(0, m) for m in msgs]) == "still here\n"


def test_input_in_a_plain_shell_without_a_terminal_fails_at_once(run, unique_name):
    """IPython without a kernel and with no terminal on stdin (as under pytest)."""
    from fiddledock_magic import CellError
    start = time.monotonic()
    with pytest.raises(CellError) as info:
        run("input('name? ')", unique_name)
    assert type(info.value).__name__ == "EOFError"
    assert "cannot answer input requests" in str(info.value)
    assert time.monotonic() - start < 15  # includes creating the instance


# --- terminal output -------------------------------------------------------------------
def test_carriage_returns_and_ansi_colours_reach_the_notebook_unchanged(k):
    code = ("import sys, time, subprocess\n"
            "print('\\x1b[31mred\\x1b[0m plain')\n"
            "for i in range(3):\n"
            "    sys.stderr.write('\\r%d%%' % (i * 50)); sys.stderr.flush(); time.sleep(0.05)\n"
            "sys.stderr.write('\\n')\n"
            "subprocess.run(['printf', '\\\\033[1mbold\\\\033[0m\\\\r\\\\n'])\n"
            "import os; print(os.environ['TERM'], os.environ['FORCE_COLOR'])")
    reply, msgs = cell(k, code)
    assert reply["status"] == "ok"
    out = stream_text([(0, m) for m in msgs])
    err = stream_text([(0, m) for m in msgs], "stderr")
    assert "\x1b[31mred\x1b[0m plain\n" in out
    assert "\x1b[1mbold\x1b[0m\r\n" in out  # a child process's escapes and \r as well
    assert err == "\r0%\r50%\r100%\n"
    assert out.endswith("xterm-color 1\n")  # what ipykernel sets for a local cell


# --- the sanitizer on its own ----------------------------------------------------------
XSS = [
    "<script>document.title='pwned'</script>",
    "<img src=x onerror=\"document.title='pwned'\">",
    "<svg onload=\"document.title='pwned'\"></svg>",
    "<a href=\"javascript:document.title='pwned'\">x</a>",
    "<a href=\"JaVaScRiPt:alert(1)\">x</a>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "<iframe srcdoc=\"<script>alert(1)</script>\"></iframe>",
    "<form action=\"/api/kernels\"><input name=x></form>",
    "<div style=\"position:fixed;top:0;left:0;width:100%;height:100%\">overlay</div>",
    "<div style=\"background:url(javascript:alert(1))\">x</div>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "<object data=\"data:text/html,<script>alert(1)</script>\"></object>",
    "<embed src=\"javascript:alert(1)\">",
    "<base href=\"javascript:alert(1)//\">",
    "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">",
    "<link rel=stylesheet href=\"http://evil/x.css\">",
    "<img src=\"http://127.0.0.1:8888/logout\">",
    "<details open ontoggle=alert(1)>",
    "<a href=\"data:text/html,<script>alert(1)</script>\">x</a>",
]


@pytest.mark.parametrize("payload", XSS)
def test_sanitized_html_keeps_no_way_to_run_code_or_reach_out(payload):
    clean = sanitize_html(payload).lower()
    for bad in ("<script", "onerror", "onload", "ontoggle", "javascript:", "<iframe", "<form",
                "<object", "<embed", "<base", "<meta", "<link", "position", "url(",
                "http://127.0.0.1", "data:text"):
        assert bad not in clean, (payload, clean)


def test_sanitized_html_keeps_formatting_links_and_inline_images():
    html = ('<h2 title="t">Report</h2><p style="color: red; font-weight: bold">red</p>'
            '<a href="https://example.org/doc">doc</a><img src="data:image/png;base64,AAAA" alt="a">'
            '<details><summary>more</summary><code>x</code></details>')
    clean = sanitize_html(html)
    assert '<h2 title="t">Report</h2>' in clean
    assert 'style="color:red;font-weight:bold"' in clean.replace(" ", "")
    assert 'href="https://example.org/doc"' in clean and "noopener" in clean
    assert 'src="data:image/png;base64,AAAA"' in clean
    assert "<details><summary>more</summary><code>x</code></details>" in clean


@pytest.mark.parametrize("text", [
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "[click](javascript\\:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](&#x6A;avascript&colon;alert(1))",
    "[click]: javascript:alert(1)\n\n[click]",
    "<javascript:alert(1)>",
    "![x](http://127.0.0.1:8888/logout)",
    "$\\href{javascript:alert(1)}{x}$",
])
def test_markdown_cannot_carry_html_script_links_or_remote_images(text):
    clean = sanitize_markdown(text)
    if clean is None:
        return  # dropped altogether: nothing reaches the page
    assert "<img" not in clean and "<javascript" not in clean.lower()
    assert "javascript:" not in clean.lower() and "javascript\\:" not in clean.lower()
    assert "![" not in clean


def test_markdown_stays_markdown():
    text = "# Title\n\n**bold** and `code` with a [link](https://example.org) and 3 < 4"
    assert sanitize_markdown(text) == text


def test_bundles_drop_scripts_widgets_and_bad_images():
    data = {"text/plain": "x", "application/javascript": "alert(1)",
            "text/javascript": "alert(1)",
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
            "application/vnd.plotly.v1+json": {"data": []},
            "image/png": "not base64 \" onerror=alert(1)",
            "image/jpeg": base64.b64encode(b"\xff\xd8ok").decode()}
    out, meta = safe_bundle(data, {"image/png": {"width": 3}, "image/jpeg": {"width": 4}})
    assert out == {"text/plain": "x", "image/jpeg": data["image/jpeg"]}
    assert meta == {"image/jpeg": {"width": 4}}
    json.dumps(out)
