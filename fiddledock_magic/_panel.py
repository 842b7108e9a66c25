"""The instance panel: an ipywidgets view of ``_panel_model.PanelModel``.

``%dockerrun panel`` shows it (and returns it: ``p = %dockerrun panel``).
Only standard ipywidgets, no custom JavaScript, so it works wherever
ipywidgets 8 does (JupyterLab, Notebook 7, VS Code). The view holds no state
of its own: it draws the model's traits and turns clicks into model calls.
CSS classes (``fd-*``) name the parts for tests and for users' styling.

Whether a view is on screen comes from ipywidgets' ``_view_count`` (the
frontend counts the views it draws), so the live refresh stops when the
panel's output is cleared.
"""

import datetime
import html

import ipywidgets as widgets

from ._panel_model import FIELDS, model_for, short_error
from ._status import format_cpu, format_duration, format_memory

# name, image, status, uptime, memory, CPU, actions
COLUMNS = (("name", "170px"), ("image", "180px"), ("status", "86px"), ("uptime", "74px"),
           ("memory used / limit", "160px"), ("CPU", "60px"), ("", "auto"))
STATUS_COLORS = {"ready": "#2e7d32", "not connected": "#1565c0", "busy": "#b45309",
                 "stopped": "#757575", "crashed": "#c62828"}
PLACEHOLDERS = {"name": "e.g. alice", "cpus": "cores", "pids": "processes"}
LABELS = {"name": "name", "image": "image", "memory": "memory", "cpus": "CPUs",
          "pids": "pids", "disk": "disk"}
FIELD_WIDTHS = {"name": "190px", "image": "250px", "memory": "135px", "cpus": "100px",
                "pids": "110px", "disk": "115px"}  # the label included


def _cell(width, widget=None):
    widget = widget or widgets.HTML()
    widget.layout = widgets.Layout(width=width, min_width=width if width != "auto" else None,
                                   overflow="hidden")
    return widget


def _beside_cells(widget):
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


def _button(text, cls, tooltip, style=""):
    b = _beside_cells(widgets.Button(
        description=text, tooltip=tooltip, button_style=style,
        layout=widgets.Layout(width="auto", height="28px", margin="0 4px 0 0",
                              flex="0 0 auto")))
    b.add_class(cls)
    return b


def _esc(text):
    return html.escape(str(text), quote=True)


def _drawing(method):
    """A view observer: a failure shows in the panel's message line, never in a log
    (observers run on the model's threads, where a traceback would go to the log)."""
    def draw(self, change=None):
        try:
            method(self, change)
        except Exception as exc:
            self.message.value = "<span style='color:#c62828'>&#10006; panel error: %s</span>" \
                                 % _esc(short_error(exc))
    draw.__name__ = method.__name__
    return draw


def _spinning(text):
    return "<span style='color:#1565c0'><i class='fa fa-spinner fa-spin'></i> %s</span>" \
           % _esc(text)


class InstanceRow(widgets.HBox):
    """One instance: its numbers and its buttons, or a confirmation, or its action
    under way (then only this row waits)."""

    def __init__(self, panel, name):
        self.panel = panel
        self.name = name
        self.cells = [_cell(width) for _, width in COLUMNS[:-1]]
        self.cells[0].add_class("fd-name")
        self.cells[2].add_class("fd-status")
        self.b_default = _button("make default", "fd-make-default",
                                 "A bare %%dockerrun runs in this instance")
        self.b_restart = _button("restart", "fd-restart",
                                 "New container with the same settings; state is lost; "
                                 "a running cell is ended")
        self.b_reset = _button("reset", "fd-reset",
                               "Fresh Python namespace in the same container; "
                               "a running cell is ended")
        self.b_delete = _button("delete", "fd-delete", "Remove the instance and its container; "
                                "a running cell is ended", "danger")
        self.ask = widgets.HTML(layout=widgets.Layout(margin="0 8px 0 0", flex="0 1 auto"))
        self.ask.add_class("fd-confirm-text")
        self.b_yes = {
            "restart": _button("yes, restart", "fd-confirm-restart", "Restart it now", "warning"),
            "delete": _button("yes, delete", "fd-confirm-delete", "Delete it now", "danger")}
        self.b_no = _button("cancel", "fd-cancel", "Keep it as it is")
        self.working = widgets.HTML(layout=widgets.Layout(flex="0 1 auto"))
        self.working.add_class("fd-row-activity")
        model = panel.model
        self.b_default.on_click(panel.guard(lambda _: model.make_default(name)))
        self.b_restart.on_click(panel.guard(lambda _: model.request("restart", name)))
        self.b_reset.on_click(panel.guard(lambda _: model.reset(name)))
        self.b_delete.on_click(panel.guard(lambda _: model.request("delete", name)))
        for b in self.b_yes.values():
            b.on_click(panel.guard(lambda _: model.confirm(name)))
        self.b_no.on_click(panel.guard(lambda _: model.cancel(name)))
        self.actions = widgets.HBox(layout=widgets.Layout(align_items="center", flex="1 1 auto",
                                                          flex_flow="row wrap"))
        self.actions.add_class("fd-actions")
        super().__init__(self.cells + [self.actions],
                         layout=widgets.Layout(align_items="center", padding="2px 0",
                                               border_bottom="1px solid #e0e0e0"))
        self.add_class("fd-row")

    def show(self, row, default, confirming, activity):
        """Draw ``row``; ``confirming``: the action asked about, ``activity``: the one
        under way (each '' if none)."""
        name = _esc(row.name)
        if default:
            name = "<b>%s</b> <span class='fd-default' title='the default instance'>" \
                   "&#9733; default</span>" % name
        image = _esc(row.image or "-")
        color = STATUS_COLORS.get(row.status, "#000")
        title = _esc(row.note) if row.note else ""
        status = "<span style='color:%s' title='%s'>&#9679; %s</span>" % (
            color, title, _esc(row.status))
        values = (name, "<span title='%s'>%s</span>" % (image, image), status,
                  _esc(format_duration(row.uptime)), _esc(format_memory(row)),
                  _esc(format_cpu(row)))
        for cell, value in zip(self.cells, values):
            if cell.value != value:
                cell.value = value
        self.b_default.disabled = default
        if activity:
            wanted = (self.working,)
            working = _spinning(activity)
            if self.working.value != working:
                self.working.value = working
        elif confirming:
            wanted = (self.ask, self.b_yes[confirming], self.b_no)
            what = {"restart": "Restart <b>%s</b>? It gets a new container: its variables and "
                               "files are lost.",
                    "delete": "Delete <b>%s</b>? Its state is lost."}[confirming] \
                % _esc(row.name)
            if row.status == "busy":
                what += " The cell running in it is ended."
            if self.ask.value != what:
                self.ask.value = what
        else:
            wanted = (self.b_default, self.b_restart, self.b_reset, self.b_delete)
        if tuple(self.actions.children) != wanted:
            self.actions.children = wanted

    def close(self):
        for w in self.cells + [self.b_default, self.b_restart, self.b_reset, self.b_delete,
                               self.ask, self.b_no, self.working, self.actions] \
                + list(self.b_yes.values()):
            w.close()
        super().close()


class InstancePanel(widgets.VBox):
    """The panel: a table of instances, a create form, progress and messages."""

    def __init__(self, model):
        self.model = model
        self.rows = {}  # name -> InstanceRow
        # header
        self.title = widgets.HTML("<b style='font-size:1.15em'>FiddleDock instances</b>",
                                  layout=widgets.Layout(margin="0 16px 0 0"))
        self.default_label = widgets.HTML()
        self.default_label.add_class("fd-default-label")
        self.updated = widgets.HTML(layout=widgets.Layout(margin="0 12px 0 0"))
        self.updated.add_class("fd-updated")
        self.b_refresh = _button("refresh", "fd-refresh", "Read the instances again now")
        self.b_refresh.icon = "refresh"
        self.live = _beside_cells(widgets.Checkbox(
            description="live", indent=False, tooltip="Refresh every few seconds while visible",
            layout=widgets.Layout(width="70px")))
        widgets.link((model, "live"), (self.live, "value"))
        header = widgets.HBox([self.title, self.default_label,
                               widgets.HBox(layout=widgets.Layout(flex="1")),
                               self.updated, self.live, self.b_refresh],
                              layout=widgets.Layout(align_items="center"))
        # table
        head = widgets.HBox([_cell(w, widgets.HTML("<b>%s</b>" % t)) for t, w in COLUMNS],
                            layout=widgets.Layout(border_bottom="2px solid #bdbdbd"))
        self.table = widgets.VBox()
        self.table.add_class("fd-rows")
        self.empty = widgets.HTML()
        self.empty.add_class("fd-empty")
        # create form
        self.fields = {}
        for f in FIELDS:
            t = _beside_cells(widgets.Text(description=LABELS[f],
                                           placeholder=self._placeholder(f),
                                           style={"description_width": "initial"},
                                           layout=widgets.Layout(width="auto", max_width="none")))
            t.layout.width = FIELD_WIDTHS[f]
            t.add_class("fd-field-" + f)
            self.fields[f] = t
        self.b_create = _button("create", "fd-create", "Create the instance", "primary")
        self.b_create.icon = "plus"
        self.b_create.on_click(self.guard(lambda _: model.create(
            **{f: t.value for f, t in self.fields.items()})))
        form = widgets.HBox([widgets.HTML("<b>New instance</b>")]
                            + [self.fields[f] for f in FIELDS] + [self.b_create],
                            layout=widgets.Layout(align_items="center", flex_flow="row wrap",
                                                  margin="10px 0 0 0"))
        self.field_errors = widgets.HTML()
        self.field_errors.add_class("fd-field-errors")
        self.activity = widgets.HTML()
        self.activity.add_class("fd-activity")
        self.message = widgets.HTML()
        self.message.add_class("fd-message")
        super().__init__([header, head, self.table, self.empty, form, self.field_errors,
                          self.activity, self.message],
                         layout=widgets.Layout(border="1px solid #bdbdbd", padding="8px 12px",
                                               width="100%", max_width="1250px"))
        self.add_class("fd-panel")
        model.observe(self._draw_rows, ["statuses", "default_instance", "confirming",
                                        "activities", "refreshed_at"])
        model.observe(self._draw_status, ["activities", "statuses", "message", "message_kind",
                                          "field_errors", "refreshed_at", "refresh_error",
                                          "default_instance"])
        model.observe(self._clear_form, "last_created")
        self.b_refresh.on_click(self.guard(lambda _: model.poke(force=True)))
        # The frontend counts its views of this widget: live refresh while > 0.
        self.observe(self._views_changed, "_view_count")
        self._view_count = 0
        self._draw_rows()
        self._draw_status()

    def _placeholder(self, field):
        c = self.model.manager.config
        defaults = {"image": c.image, "memory": c.memory, "disk": c.disk,
                    "cpus": "%g" % c.cpus, "pids": str(c.pids)}
        return defaults.get(field) or PLACEHOLDERS.get(field, "")

    # --- clicks ------------------------------------------------------------------
    def guard(self, fn):
        """A click handler that shows errors in the panel instead of the log."""
        def handler(button):
            try:
                fn(button)
            except Exception as exc:
                self.model._say(short_error(exc), "error")
        return handler

    def _views_changed(self, change):
        self.model.set_visible(self, bool(change["new"]))

    def close(self):
        self.model.set_visible(self, False)
        for name in ("_draw_rows", "_draw_status", "_clear_form"):
            try:
                self.model.unobserve(getattr(self, name))
            except ValueError:
                pass
        super().close()

    # --- drawing (any thread; the model serializes the calls) ---------------------
    @_drawing
    def _draw_rows(self, change=None):
        m = self.model
        wanted = []
        for row in m.statuses:
            r = self.rows.get(row.name)
            if r is None:
                r = self.rows[row.name] = InstanceRow(self, row.name)
            r.show(row, row.name == m.default_instance, m.confirming.get(row.name, ""),
                   m.activities.get(row.name, ""))
            wanted.append(r)
        for name in list(self.rows):
            if name not in {r.name for r in wanted}:
                self.rows.pop(name).close()
        if tuple(self.table.children) != tuple(wanted):
            self.table.children = wanted
        if m.statuses:
            empty = ""
        elif m.refreshed_at:
            empty = ("<i>No instances in this notebook yet: run a <code>%%dockerrun</code> "
                     "cell or create one below.</i>")
        else:
            empty = "<i>Reading the instances...</i>"
        if self.empty.value != empty:
            self.empty.value = empty

    @_drawing
    def _draw_status(self, change=None):
        m = self.model
        names = m.names()
        default = _esc(m.default_instance)
        if m.refreshed_at and m.default_instance not in names:
            default += " <i>(not created yet)</i>"
        self.default_label.value = "default instance: <b>%s</b>" % default
        if m.refresh_error:
            updated = "<span style='color:#c62828'>%s</span>" % _esc(m.refresh_error)
        elif m.refreshed_at:
            when = datetime.datetime.fromtimestamp(m.refreshed_at).strftime("%H:%M:%S")
            updated = "<span style='color:#757575'>updated %s</span>" % when
        else:
            updated = ""
        self.updated.value = updated
        errors = m.field_errors
        self.field_errors.value = "".join(
            "<div style='color:#c62828'>%s: %s</div>" % (LABELS[f], _esc(errors[f]))
            for f in FIELDS if f in errors)
        for f, t in self.fields.items():
            t.layout.border = "1px solid #c62828" if f in errors else None
        # Actions on an instance show on its row; here only those without one (create).
        self.activity.value = "<br>".join(_spinning(text) for name, text
                                          in sorted(m.activities.items()) if name not in names)
        if m.message:
            color = "#c62828" if m.message_kind == "error" else "#2e7d32"
            mark = "&#10006;" if m.message_kind == "error" else "&#10004;"
            self.message.value = "<span style='color:%s'>%s %s</span>" % (
                color, mark, _esc(m.message))
        else:
            self.message.value = ""

    @_drawing
    def _clear_form(self, change):
        """Once the instance the form asked for was created, empty the form."""
        if change["new"] and self.fields["name"].value.strip() == change["new"]:
            for t in self.fields.values():
                t.value = ""


def panel_for(manager, shell=None):
    """The notebook's panel: one widget per notebook, shown again on each call."""
    model = model_for(manager, shell)
    panel = getattr(model, "_panel", None)
    if panel is None or panel.comm is None:  # never made, or closed
        panel = InstancePanel(model)
        model._panel = panel
    model.poke(force=True)
    return panel


def panel(shell=None):
    """The instance panel of an IPython shell (default: the running one)."""
    from IPython import get_ipython
    from ._extension import manager_of
    shell = shell or get_ipython()
    manager = manager_of(shell) if shell is not None else None
    if manager is None:
        raise RuntimeError("load the extension first: %load_ext fiddledock_magic")
    return panel_for(manager, shell)
