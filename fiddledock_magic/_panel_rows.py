"""The panel's table: one CSS grid for the header and every instance row.

The table is a ``GridBox`` whose column widths shrink with the panel; the
header and each row are grids of their own that take the table's columns
(``grid-template-columns: subgrid``), so a column has one x from the header
down to the last row, and nothing scrolls sideways on its own. A row's
actions are behind its "⋯" button: they unfold on a line of their own under
the row (spanning the table's width, wrapping if need be), where its
questions and its action under way show too.
"""

import datetime
import html

import ipywidgets as widgets

from ._status import format_cpu, format_duration, format_memory

# (heading, width): the tick, name, image, status, uptime, memory, CPU, last result, menu.
# A column shrinks to its minimum before the panel gets too narrow for the table.
COLUMNS = (("", "26px"), ("name", "minmax(70px, 1.5fr)"), ("image", "minmax(56px, 1.2fr)"),
           ("status", "minmax(62px, 0.8fr)"), ("uptime", "minmax(62px, 0.6fr)"),
           ("memory used / limit", "minmax(76px, 1.3fr)"), ("CPU", "minmax(40px, 0.5fr)"),
           ("last result", "minmax(82px, 1.2fr)"), ("", "auto"))
NODE = ("node", "minmax(70px, 1fr)")  # after status, on a Swarm cluster only
STATUS_COLORS = {"ready": "#2e7d32", "not connected": "#1565c0", "busy": "#b45309",
                 "stopped": "#757575", "crashed": "#c62828"}
RESULT_COLORS = {"ok": "#2e7d32", "error": "#c62828", "timeout": "#b45309",
                 "interrupted": "#6d4c41"}
QUESTIONS = {"restart": "Restart <b>%s</b>? It gets a new container: its variables and files "
                        "are lost.",
             "delete": "Delete <b>%s</b>? Its state is lost."}
# From the first column to the last. Set as grid-area, not grid-column: ipywidgets
# applies its layout traits in order and clearing the unset grid-area (a shorthand)
# would clear grid-column again.
SPAN = "auto / 1 / auto / -1"
# Text in a cell wraps (or, with clip, ends in "...") instead of widening its column.
_WRAP = "line-height:1.3;padding:5px 0;white-space:normal;overflow-wrap:anywhere"
_HEAD = "line-height:1.3;padding:5px 0;white-space:normal"  # words kept whole
_CLIP = "line-height:1.3;padding:5px 0;white-space:nowrap;overflow:hidden;" \
        "text-overflow:ellipsis"


def on_cluster(model):
    """Whether the table has a node column: instances run on a Swarm cluster's nodes."""
    return model.manager.config.backend == "swarm"


def columns(with_node):
    return COLUMNS[:4] + (NODE,) + COLUMNS[4:] if with_node else COLUMNS


def esc(text):
    return html.escape(str(text), quote=True)


def spinning(text):
    return "<span style='color:#1565c0'><i class='fa fa-spinner fa-spin'></i> %s</span>" \
           % esc(text)


def beside_cells(widget):
    """Let the frontend's messages to ``widget`` be handled while a cell runs.

    JupyterLab 4.6+ sends widget messages over a kernel subshell, which runs
    beside the main shell's cell. ipykernel 7 routes a widget's messages to
    the shell that last sent on it instead; for this panel, which is drawn
    from its refresh thread, that is the main shell, where a click waits
    until the running cell has finished. Keep the frontend's choice.
    """
    comm = getattr(widget, "comm", None)
    if comm is not None and callable(getattr(comm, "_reply_subshell_for", None)):
        comm._reply_subshell_for = lambda data, default: default
    return widget


def button(text, cls, tooltip, style=""):
    b = beside_cells(widgets.Button(
        description=text, tooltip=tooltip, button_style=style,
        layout=widgets.Layout(width="auto", height="28px", margin="2px 4px 2px 0",
                              flex="0 0 auto")))
    b.add_class(cls)
    return b


def tick(tooltip):
    """A checkbox as narrow as its box (ipywidgets' default is 300 px wide)."""
    box = beside_cells(widgets.Checkbox(indent=False, tooltip=tooltip,
                                        layout=widgets.Layout(width="22px", margin="0")))
    box.add_class("fd-tick")
    return box


def cell(cls=None):
    # display block: the text's box is as wide as the cell, not as its content, so a
    # clipped text ends in "..." and a long one wraps
    widget = widgets.HTML(layout=widgets.Layout(min_width="0", overflow="hidden",
                                                margin="0 6px 0 0", display="block"))
    if cls:
        widget.add_class(cls)
    return widget


def subgrid(children, cls):
    """A line of the table that lays its children in the table's own columns."""
    box = widgets.GridBox(children, layout=widgets.Layout(
        grid_area=SPAN, grid_template_columns="subgrid", align_items="center",
        overflow="visible"))
    box.add_class(cls)
    return box


def table(head, rows, with_node=False):
    """The grid itself: ``head`` and ``rows`` (a box of rows) span all its columns."""
    # Narrower than every column's minimum (about 560 px), the table scrolls sideways as
    # one, its columns still aligned.
    box = widgets.GridBox([head, rows], layout=widgets.Layout(
        grid_template_columns=" ".join(width for _, width in columns(with_node)), width="100%",
        overflow="auto hidden"))
    box.add_class("fd-table")
    return box


def header(select_all, with_node=False):
    cells = [select_all]
    for heading, _ in columns(with_node)[1:]:
        c = cell("fd-head")
        c.value = "<div style='%s'><b>%s</b></div>" % (_HEAD, esc(heading))
        cells.append(c)
    head = subgrid(cells, "fd-header")
    head.layout.border_bottom = "2px solid #bdbdbd"
    return head


def _unbroken(text):
    """Escaped, in one piece: the line breaks around it, not inside."""
    return "<span style='white-space:nowrap'>%s</span>" % esc(text)


def format_memory_cell(row):
    """'15.5 MiB / 256.0 MiB' that wraps at the slash only."""
    return " / ".join(_unbroken(part) for part in format_memory(row).split(" / "))


def format_result(result):
    """The last-result cell: the status, when the cell ended and how long it ran."""
    if not result:
        return "<div style='%s;color:#757575'>-</div>" % _WRAP
    seconds = result["seconds"]
    took = "%.1f s" % seconds if seconds < 60 else format_duration(
        datetime.timedelta(seconds=seconds))
    when = datetime.datetime.fromtimestamp(result["at"]).strftime("%H:%M:%S")
    return ("<div style='%s' title='the last cell ended at %s after %s'>"
            "<span style='color:%s'>%s</span> %s <span style='color:#616161'>%s</span></div>"
            % (_WRAP, when, took, RESULT_COLORS.get(result["status"], "#000"),
               _unbroken("\u25cf " + result["status"]), _unbroken(took), _unbroken("at " + when)))


class InstanceRow(widgets.GridBox):
    """One instance: a tick, its numbers, its last result and a "⋯" menu; under them
    (when unfolded) its actions, or a question, or its action under way."""

    def __init__(self, panel, name):
        self.panel = panel
        self.name = name
        model = panel.model
        self.tick = tick("Select %s to act on several instances at once" % name)
        self.tick.observe(lambda change: model.select(name, change["new"]), "value")
        # the instance's numbers: name, image, status, (node,) uptime, memory, CPU
        self.with_node = on_cluster(model)
        self.cells = [cell(cls) for cls in ("fd-name", "fd-image", "fd-status")
                      + ("fd-node",) * self.with_node + ("fd-uptime", "fd-memory", "fd-cpu")]
        self.result = cell("fd-result")
        self.b_menu = button("\u22ef", "fd-menu", "Actions on %s: make default, restart, "
                                                  "reset, delete" % name)
        self.b_menu.layout.margin = "2px 0"
        self.b_default = button("make default", "fd-make-default",
                                "A bare %%dockerrun runs in this instance")
        self.b_restart = button("restart", "fd-restart",
                                "New container with the same settings; state is lost; "
                                "a running cell is ended")
        self.b_reset = button("reset", "fd-reset", "Fresh Python namespace in the same "
                                                   "container; a running cell is ended")
        self.b_delete = button("delete", "fd-delete", "Remove the instance and its container; "
                               "a running cell is ended", "danger")
        self.ask = widgets.HTML(layout=widgets.Layout(margin="0 8px 0 0", flex="0 1 auto"))
        self.ask.add_class("fd-confirm-text")
        self.b_yes = {
            "restart": button("yes, restart", "fd-confirm-restart", "Restart it now", "warning"),
            "delete": button("yes, delete", "fd-confirm-delete", "Delete it now", "danger")}
        self.b_no = button("cancel", "fd-cancel", "Keep it as it is")
        self.working = widgets.HTML(layout=widgets.Layout(flex="0 1 auto"))
        self.working.add_class("fd-row-activity")
        guard = panel.guard
        self.b_menu.on_click(guard(lambda _: model.toggle_menu(name)))
        self.b_default.on_click(guard(lambda _: model.make_default(name)))
        self.b_restart.on_click(guard(lambda _: model.request("restart", name)))
        self.b_reset.on_click(guard(lambda _: model.reset(name)))
        self.b_delete.on_click(guard(lambda _: model.request("delete", name)))
        for b in self.b_yes.values():
            b.on_click(guard(lambda _: model.confirm(name)))
        self.b_no.on_click(guard(lambda _: model.cancel(name)))
        # What the menu holds now (the buttons, a question or a spinner); shown when the
        # menu is open, and always while there is a question or an action under way.
        self.actions = widgets.HBox(layout=widgets.Layout(
            grid_area=SPAN, align_items="center", flex_flow="row wrap",
            margin="0 0 4px 26px", display="none"))
        self.actions.add_class("fd-actions")
        super().__init__([self.tick] + self.cells + [self.result, self.b_menu, self.actions],
                         layout=widgets.Layout(grid_area=SPAN,
                                               grid_template_columns="subgrid",
                                               align_items="center", overflow="visible",
                                               border_bottom="1px solid #e0e0e0"))
        self.add_class("fd-row")

    def show(self, row, default, confirming, activity, selected=False, menu=False,
             result=None):
        """Draw ``row``; ``confirming``: the action asked about, ``activity``: the one
        under way (each '' if none); ``menu``: whether its menu is unfolded."""
        name = esc(row.name)
        if default:
            name = "<b>%s</b> <span class='fd-default' title='the default instance'>" \
                   "&#9733; default</span>" % name
        image = esc(row.image or "-")
        title = esc(row.note) if row.note else ""
        status = "<span style='color:%s' title='%s'>%s</span>" % (
            STATUS_COLORS.get(row.status, "#000"), title, _unbroken("\u25cf " + row.status))
        values = ("<div style='%s'>%s</div>" % (_WRAP, name),
                  "<div style='%s' title='%s'>%s</div>" % (_CLIP, image, image),
                  "<div style='%s'>%s</div>" % (_WRAP, status)) \
            + ("<div style='%s'>%s</div>" % (_WRAP, esc(row.node or "-")),) * self.with_node \
            + ("<div style='%s'>%s</div>" % (_WRAP, esc(format_duration(row.uptime))),
                  "<div style='%s'>%s</div>" % (_WRAP, format_memory_cell(row)),
                  "<div style='%s'>%s</div>" % (_WRAP, esc(format_cpu(row))))
        for c, value in zip(self.cells + [self.result], values + (format_result(result),)):
            if c.value != value:
                c.value = value
        if self.tick.value != selected:
            self.tick.value = selected
        self.b_default.disabled = default
        self.b_menu.button_style = "info" if menu else ""
        if activity:
            wanted = (self.working,)
            working = spinning(activity)
            if self.working.value != working:
                self.working.value = working
        elif confirming:
            wanted = (self.ask, self.b_yes[confirming], self.b_no)
            what = QUESTIONS[confirming] % esc(row.name)
            if row.status == "busy":
                what += " The cell running in it is ended."
            if self.ask.value != what:
                self.ask.value = what
        else:
            wanted = (self.b_default, self.b_restart, self.b_reset, self.b_delete)
        if tuple(self.actions.children) != wanted:
            self.actions.children = wanted
        display = "flex" if menu or activity or confirming else "none"
        if self.actions.layout.display != display:
            self.actions.layout.display = display

    def close(self):
        for w in self.cells + [self.tick, self.result, self.b_menu, self.b_default,
                               self.b_restart, self.b_reset, self.b_delete, self.ask,
                               self.b_no, self.working, self.actions] \
                + list(self.b_yes.values()):
            w.close()
        super().close()
