"""In a real JupyterLab page: a container's HTML cannot run script there.

A container cell displays HTML with a <script>, an <img onerror>, an SVG
with onload and a Javascript object, each of which would change
document.title. Its harmless part must be visible and the title must stay.
A local cell then shows the same kind of payload unfiltered and the title
does change: proof that the page would have run it, so the first half of
the test can fail.
"""

import re
import time
import uuid

import pytest

from browser import Notebook
from conftest import _remove_scope

PAYLOAD = (
    "<p class='harmless'>harmless part visible: <b>bold</b></p>"
    "<script>document.title = 'pwned by script'</script>"
    "<img src='does-not-exist.png' onerror=\"document.title = 'pwned by onerror'\">"
    "<svg onload=\"document.title = 'pwned by svg'\"><circle r='3'/></svg>"
    "<a href=\"javascript:document.title = 'pwned by link'\" id='js-link'>a link</a>"
)


@pytest.fixture
def scope(docker_client):
    name = "pytest-browser-%s" % uuid.uuid4().hex[:8]
    yield name
    _remove_scope(docker_client, name)


def test_container_html_cannot_run_script_in_jupyterlab(lab_server, lab_page, scope,
                                                        default_image):
    from playwright.sync_api import expect
    cells = [
        "%%load_ext fiddledock_magic\n%%config DockerRun.scope = %r" % scope,
        "%%%%dockerrun web\n"
        "from IPython.display import display, HTML, SVG, Javascript\n"
        "display(HTML(%r))\n"
        "display(SVG(\"<svg xmlns='http://www.w3.org/2000/svg' width='40' height='40' "
        "onload=\\\"document.title='pwned by svg image'\\\"><script>document.title="
        "'pwned by svg script'</script><rect width='40' height='40' fill='teal'/></svg>\"))\n"
        "display(Javascript(\"document.title = 'pwned by javascript'\"))\n"
        "print('container cell done')" % PAYLOAD,
        "from IPython.display import HTML\n"
        "HTML(\"<img src='also-missing.png' onerror=\\\"document.title = 'local control ran'\\\">\")",
    ]
    lab_server.notebook("html-safety.ipynb", cells)
    nb = Notebook(lab_page, lab_server, "html-safety.ipynb").open()
    page = lab_page
    title = page.title()
    assert "pwned" not in title

    nb.run(0)
    nb.run(1)
    out = nb.output(1)
    expect(out.get_by_text("container cell done")).to_be_visible()
    expect(out.get_by_text("harmless part visible")).to_be_visible()
    expect(out.locator("b", has_text="bold")).to_be_visible()
    # The SVG arrived as a picture (an <img> with a data: URL) and was drawn.
    svg_img = out.locator("img[src^='data:image/svg+xml']")
    expect(svg_img).to_have_count(1)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=svg_img.element_handle())
    # Give any handler time to fire (the broken image's request fails within milliseconds).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert "pwned" not in page.title(), page.title()
        time.sleep(0.2)
    assert page.title() == title
    html = out.inner_html()
    assert "onerror" not in html and "onload" not in html and "<script" not in html
    assert "javascript:" not in html
    # The link is there as text, but goes nowhere: clicking it runs nothing.
    out.locator("a", has_text="a link").click()
    page.wait_for_timeout(300)
    assert page.title() == title

    # Control: the same trick from the notebook's own kernel does run.
    nb.run(2)
    expect(page).to_have_title(re.compile("local control ran"), timeout=10_000)
