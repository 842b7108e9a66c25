"""In a real JupyterLab page: a long notice wraps between words, never inside one, and
notices and FiddleDock's error lines are drawn with a contrast of at least 4.5:1."""

import re

from browser import Notebook

NOTICE = ("instance 'margaret' was not running (it had stopped, exit code 137); restarted "
          "it: its previous state is lost, so run the cells that define its variables "
          "again before the next cell uses them. ") * 3

LINES = """out => {
    // Where the notice's lines break: the characters on either side of each break.
    const block = out.querySelector('.fiddledock-notice');
    const walker = document.createTreeWalker(block, NodeFilter.SHOW_TEXT);
    const chars = [];
    let node;
    while ((node = walker.nextNode())) {
        for (let i = 0; i < node.data.length; i++) {
            const range = document.createRange();
            range.setStart(node, i);
            range.setEnd(node, i + 1);
            const rects = range.getClientRects();
            if (rects.length) chars.push([node.data[i], rects[0].top]);
        }
    }
    const breaks = [];
    for (let i = 1; i < chars.length; i++) {
        if (chars[i][1] > chars[i - 1][1] + 2) breaks.push(chars[i - 1][0] + chars[i][0]);
    }
    const style = getComputedStyle(block);
    return {breaks: breaks, color: style.color, background: style.backgroundColor,
            width: block.getBoundingClientRect().width};
}"""

ERROR_COLOURS = """out => {
    const text = out.querySelector('.jp-RenderedText');
    const pre = text.querySelector('pre');
    return {text: pre.innerText, color: getComputedStyle(pre).color,
            background: getComputedStyle(text).backgroundColor};
}"""


def rgba(css):
    """'rgb(1, 2, 3)' or 'rgba(1, 2, 3, 0.5)' -> (r, g, b, a)."""
    parts = [float(v) for v in re.findall(r"[\d.]+", css)]
    return tuple(parts[:3]) + ((parts[3],) if len(parts) > 3 else (1.0,))


def shown_contrast(fg_css, bg_css):
    """WCAG contrast of text drawn in fg (its alpha blended) over an opaque bg."""
    from test_words import contrast
    *fg, alpha = rgba(fg_css)
    bg = rgba(bg_css)[:3]
    blended = [alpha * f + (1 - alpha) * b for f, b in zip(fg, bg)]
    to_hex = lambda rgb: "#" + "".join("%02x" % round(c) for c in rgb)  # noqa: E731
    return contrast(to_hex(blended), to_hex(bg))


def test_a_long_notice_wraps_between_words_and_reads_well(lab_server, lab_page, tmp_path):
    lab_page.set_viewport_size({"width": 900, "height": 900})
    cells = ["from fiddledock_magic._render import CellRenderer\n"
             "CellRenderer(get_ipython()).notice(%r)" % NOTICE,
             "%load_ext fiddledock_magic\n%dockerrun lst"]
    lab_server.notebook("words.ipynb", cells)
    nb = Notebook(lab_page, lab_server, "words.ipynb").open()
    nb.run(0)
    nb.run(1)
    nb.output(0).locator(".fiddledock-notice").wait_for()
    shown = nb.output(0).evaluate(LINES)
    nb.screenshot(tmp_path / "notice.png")
    assert len(shown["breaks"]) >= 3, shown  # a few lines at this width
    for pair in shown["breaks"]:
        assert pair[0] == " " and pair[1] != " ", shown["breaks"]  # after a word's space
    assert shown_contrast(shown["color"], shown["background"]) >= 4.5, shown
    error = nb.output(1).evaluate(ERROR_COLOURS)
    assert error["text"].startswith("FiddleDock: unknown subcommand 'lst'"), error
    assert shown_contrast(error["color"], error["background"]) >= 4.5, error
