"""The panel in JupyterLab at narrow and wide windows, and acting on several rows.

Three instances with long names (and a last result each) are shown in the
panel; the window is then 1400 px wide, 1100 px with the file browser open,
and 900 px. At each width every control must be reachable (its box inside
the panel and inside the notebook's visible width, and Playwright's trial
click finds it on top and enabled), nothing scrolls sideways, and each
column has one x from the header down to the last row. A screenshot of each
width is saved in the test's tmp_path (the paths are printed). Then, at 900
px: two rows ticked, delete asks once, naming how many; yes removes both
rows and both containers; reset on the last selected row works too.
"""

from browser import Notebook
from test_browser_panel import ROW_TIMEOUT, notebook, row  # noqa: F401 (notebook: a fixture)

NAMES = ("alice-with-a-rather-long-name", "bob", "carol-in-group-b")
# The sizes a teacher's window has; at 1100 the file browser is open beside the notebook.
WIDTHS = ((1400, False), (1100, True), (900, False))


def inside(box, outer, slack=1.0):
    return (box["x"] >= outer["x"] - slack and box["y"] >= outer["y"] - slack
            and box["x"] + box["width"] <= outer["x"] + outer["width"] + slack
            and box["y"] + box["height"] <= outer["y"] + outer["height"] + slack)


def check_reachable(page, panel, controls, where):
    """Each control lies inside the panel and the notebook's visible width, and a click
    would land on it (Playwright's actionability checks, nothing clicked)."""
    window = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer")
    for what, control in controls:
        control.scroll_into_view_if_needed()
        box, outer, seen = control.bounding_box(), panel.bounding_box(), window.bounding_box()
        assert box and box["width"] > 0, "%s: %s has no box" % (where, what)
        assert inside(box, outer), "%s: %s %r is outside the panel %r" % (where, what, box,
                                                                        outer)
        assert box["x"] >= seen["x"] and box["x"] + box["width"] <= seen["x"] + seen["width"], \
            "%s: %s %r is outside the notebook's visible width %r" % (where, what, box, seen)
        control.click(trial=True, timeout=5_000)


def column_xs(cells):
    return [round(box["x"]) for box in (c.bounding_box() for c in cells)]


def test_panel_fits_900_1100_1400_and_acts_on_selected_rows(lab_server, lab_page, notebook,
                                                          docker_client, default_image,
                                                          tmp_path):
    from playwright.sync_api import expect
    from fiddledock_magic._spec import container_name

    scope = str(lab_server.root / notebook)
    cells = [
        "%load_ext fiddledock_magic",
        "\n".join("%%dockerrun create %s --memory 256m" % name for name in NAMES),
        # The last results, as the magics record them after each cell.
        "from fiddledock_magic._extension import manager_of\n"
        "from fiddledock_magic._panel_model import record_result\n"
        "m = manager_of(get_ipython())\n"
        "record_result(m, %r, 'ok', 0.42)\n"
        "record_result(m, %r, 'error', 3.5)\n"
        "record_result(m, %r, 'timeout', 61)" % NAMES,
        "%dockerrun panel",
    ]
    lab_server.notebook(notebook, cells)
    nb = Notebook(lab_page, lab_server, notebook).open()
    page = lab_page
    for index in range(3):
        nb.run(index)
    nb.run(3)
    panel = nb.output(3).locator(".fd-panel")
    for name in NAMES:
        expect(row(panel, name)).to_be_visible(timeout=ROW_TIMEOUT)
    expect(row(panel, NAMES[0]).locator(".fd-result")).to_contain_text("ok", timeout=ROW_TIMEOUT)
    expect(row(panel, NAMES[1]).locator(".fd-result")).to_contain_text("error")
    expect(row(panel, NAMES[2]).locator(".fd-result")).to_contain_text("timeout")
    expect(row(panel, NAMES[2]).locator(".fd-result")).to_contain_text("1m 01s")
    expect(row(panel, NAMES[0]).locator(".fd-memory")).to_contain_text("/ 256.0 MiB",
                                                                        timeout=ROW_TIMEOUT)
    browser_tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='filebrowser']")
    shots = []
    for width, file_browser in WIDTHS:
        where = "%d px%s" % (width, " with the file browser" if file_browser else "")
        page.set_viewport_size({"width": width, "height": 900})
        if file_browser != ("lm-mod-current" in (browser_tab.get_attribute("class") or "")):
            browser_tab.click()
        if file_browser:
            expect(page.locator(".jp-FileBrowser")).to_be_visible()
        first = row(panel, NAMES[0])
        first.locator("button.fd-menu").click()  # unfold the first row's actions
        expect(first.locator("button.fd-restart")).to_be_visible()
        panel.scroll_into_view_if_needed()
        # the layout after the resize: two animation frames later it has been drawn
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                      "requestAnimationFrame(r)))")

        # Nothing scrolls sideways: not the panel, not the table, not the output area.
        for what, part in (("panel", panel), ("table", panel.locator(".fd-table")),
                           ("output", nb.output(3))):
            over = part.evaluate("e => e.scrollWidth - e.clientWidth")
            assert over <= 1, "%s: the %s scrolls sideways by %d px" % (where, what, over)
        # One x per column from the header down.
        head = panel.locator(".fd-header").locator(":scope > *")
        head_xs = column_xs([head.nth(i) for i in range(head.count())])
        for name in NAMES:
            parts = row(panel, name).locator(":scope > *:not(.fd-actions)")
            xs = column_xs([parts.nth(i) for i in range(parts.count())])
            assert xs == head_xs, "%s: %s's columns %s, the header's %s" % (where, name, xs,
                                                                          head_xs)
        controls = [("select all", panel.locator(".fd-select-all input")),
                    ("refresh", panel.locator("button.fd-refresh")),
                    ("live", panel.locator(".fd-live input"))]
        for name in NAMES:
            controls += [("%s's tick" % name, row(panel, name).locator(".fd-tick input")),
                         ("%s's menu" % name, row(panel, name).locator("button.fd-menu"))]
        for action in ("make-default", "restart", "reset", "delete"):
            controls.append(("%s's %s" % (NAMES[0], action),
                             first.locator("button.fd-%s" % action)))
        controls += [("create", panel.locator("button.fd-create"))] + [
            ("the %s field" % f, panel.locator(".fd-field-%s input" % f))
            for f in ("name", "image", "memory", "cpus", "pids", "disk")]
        check_reachable(page, panel, controls, where)
        shot = tmp_path / ("panel-%d%s.png" % (width, "-file-browser" if file_browser else ""))
        box = panel.bounding_box()
        page.screenshot(path=str(shot), clip={
            "x": 0, "y": max(0, box["y"] - 8), "width": width,
            "height": min(box["height"] + 16, 900 - max(0, box["y"] - 8))})
        shots.append(str(shot))
        first.locator("button.fd-menu").click()  # fold it again
        expect(first.locator("button.fd-restart")).to_be_hidden()
    print("panel screenshots:", " ".join(shots))

    # At 900 px: tick two rows; the bulk buttons are reachable; delete asks once.
    ticked = NAMES[1:]
    for name in ticked:
        row(panel, name).locator(".fd-tick input").check()
    bulk = panel.locator(".fd-bulk")
    expect(bulk.locator(".fd-selection")).to_contain_text("2 selected")
    check_reachable(page, panel, [("selected %s" % a, bulk.locator("button.fd-selected-%s" % a))
                                  for a in ("reset", "restart", "delete")], "900 px, 2 ticked")
    before = docker_client.api.inspect_container(container_name(NAMES[1], scope))["Id"]
    bulk.locator("button.fd-selected-reset").click()  # at once, no question
    expect(panel.locator(".fd-message")).to_contain_text(
        "reset 2 instances: %s and %s" % ticked, timeout=ROW_TIMEOUT)
    assert docker_client.api.inspect_container(container_name(NAMES[1], scope))["Id"] == before
    bulk.locator("button.fd-selected-delete").click()
    expect(bulk.locator(".fd-selected-confirm-text")).to_have_text(
        "Delete 2 instances (%s and %s)? Their state is lost." % ticked)
    check_reachable(page, panel, [("yes", bulk.locator("button.fd-selected-confirm-delete")),
                                  ("cancel", bulk.locator("button.fd-selected-cancel"))],
                    "900 px, delete 2?")
    page.screenshot(path=str(tmp_path / "panel-900-delete-2.png"))
    bulk.locator("button.fd-selected-confirm-delete").click()
    expect(panel.locator(".fd-message")).to_contain_text(
        "deleted 2 instances: %s and %s" % ticked, timeout=ROW_TIMEOUT)
    for name in ticked:
        expect(row(panel, name)).to_have_count(0)
        assert not docker_client.containers.list(
            all=True, filters={"name": container_name(name, scope)})
    expect(row(panel, NAMES[0])).to_be_visible()
    expect(bulk.locator(".fd-selection")).to_contain_text("Tick rows")
    page.screenshot(path=str(tmp_path / "panel-900-deleted.png"))
