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

import ipywidgets as widgets

from ._errors import short_error
from ._pacing import give_way
from ._panel_batch import cells_ended, counted, listed
from ._panel_model import FIELDS, model_for
from ._panel_rows import (SPAN, InstanceRow, beside_cells, button, esc, header, on_cluster,
                          spinning, table, tick)
from ._status import format_duration

PLACEHOLDERS = {"name": "e.g. alice", "cpus": "cores", "pids": "processes"}
LABELS = {"name": "name", "image": "image", "memory": "memory", "cpus": "CPUs",
          "pids": "pids", "disk": "disk"}
FIELD_WIDTHS = {"name": "190px", "image": "250px", "memory": "135px", "cpus": "100px",
                "pids": "110px", "disk": "115px"}  # the label included
BULK_QUESTIONS = {"restart": "Restart %s? Each gets a new container: their variables and files "
                             "are lost.",
                  "delete": "Delete %s? Their state is lost."}


def _drawing(method):
    """A view observer: a failure shows in the panel's message line, never in a log
    (observers run on the model's threads, where a traceback would go to the log)."""
    def draw(self, change=None):
        try:
            method(self, change)
        except Exception as exc:
            self.message.value = "<span style='color:#c62828'>&#10006; panel error: %s</span>" \
                                 % esc(short_error(exc))
    draw.__name__ = method.__name__
    return draw


class InstancePanel(widgets.VBox):
    """The panel: a table of instances, acting on the selected ones, a create form,
    progress and messages."""

    def __init__(self, model):
        self.model = model
        self.rows = {}  # name -> InstanceRow
        self._drawn = {}  # name -> what its row was last drawn from (unchanged: not drawn again)
        # header
        self.title = widgets.HTML("<b style='font-size:1.15em'>FiddleDock instances</b>",
                                  layout=widgets.Layout(margin="0 16px 0 0"))
        self.default_label = widgets.HTML(layout=widgets.Layout(margin="0 16px 0 0"))
        self.default_label.add_class("fd-default-label")
        self.updated = widgets.HTML(layout=widgets.Layout(margin="0 12px 0 0"))
        self.updated.add_class("fd-updated")
        self.b_refresh = button("refresh", "fd-refresh", "Read the instances again now")
        self.b_refresh.icon = "refresh"
        self.live = beside_cells(widgets.Checkbox(
            description="live", indent=False, tooltip="Refresh every few seconds while visible",
            layout=widgets.Layout(width="70px")))
        self.live.add_class("fd-live")
        widgets.link((model, "live"), (self.live, "value"))
        top = widgets.HBox([self.title, self.default_label,
                            widgets.HBox(layout=widgets.Layout(flex="1")),
                            self.updated, self.live, self.b_refresh],
                           layout=widgets.Layout(align_items="center", flex_flow="row wrap"))
        # the table: one grid for the header and the rows
        self.select_all = tick("Select every instance")
        self.select_all.add_class("fd-select-all")
        self.select_all.observe(self._select_all_changed, "value")
        self.head = header(self.select_all, on_cluster(model))
        self.table = widgets.GridBox(layout=widgets.Layout(
            grid_area=SPAN, grid_template_columns="subgrid", overflow="visible"))
        self.table.add_class("fd-rows")
        self.grid = table(self.head, self.table, on_cluster(model))
        self.empty = widgets.HTML()
        self.empty.add_class("fd-empty")
        # acting on the selected rows
        self.selection = widgets.HTML(layout=widgets.Layout(margin="0 8px 0 0"))
        self.selection.add_class("fd-selection")
        self.b_selected = {
            "reset": button("reset", "fd-selected-reset", "A fresh Python namespace in each "
                                                          "selected instance"),
            "restart": button("restart", "fd-selected-restart", "A new container for each "
                                                                "selected instance (asks first)"),
            "delete": button("delete", "fd-selected-delete", "Remove the selected instances "
                                                             "(asks first)", "danger")}
        for action, b in self.b_selected.items():
            b.on_click(self.guard(lambda _, action=action: model.act_on_selected(action)))
        self.selected_ask = widgets.HTML(layout=widgets.Layout(margin="0 8px 0 0",
                                                               flex="0 1 auto"))
        self.selected_ask.add_class("fd-selected-confirm-text")
        self.b_selected_yes = {
            "restart": button("yes, restart them", "fd-selected-confirm-restart",
                              "Restart them now", "warning"),
            "delete": button("yes, delete them", "fd-selected-confirm-delete",
                             "Delete them now", "danger")}
        for b in self.b_selected_yes.values():
            b.on_click(self.guard(lambda _: model.confirm_selected()))
        self.b_selected_no = button("cancel", "fd-selected-cancel", "Keep them as they are")
        self.b_selected_no.on_click(self.guard(lambda _: model.cancel_selected()))
        self.bulk = widgets.HBox(layout=widgets.Layout(align_items="center",
                                                       flex_flow="row wrap", margin="6px 0 0 0"))
        self.bulk.add_class("fd-bulk")
        # create form
        self.fields = {}
        for f in FIELDS:
            t = beside_cells(widgets.Text(description=LABELS[f],
                                          placeholder=self._placeholder(f),
                                          style={"description_width": "initial"},
                                          layout=widgets.Layout(width="auto", max_width="none")))
            t.layout.width = FIELD_WIDTHS[f]
            t.add_class("fd-field-" + f)
            self.fields[f] = t
        self.b_create = button("create", "fd-create", "Create the instance", "primary")
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
        super().__init__([top, self.grid, self.empty, self.bulk, form, self.field_errors,
                          self.activity, self.message],
                         layout=widgets.Layout(border="1px solid #bdbdbd", padding="8px 12px",
                                               width="100%", max_width="1250px"))
        self.add_class("fd-panel")
        model.observe(self._draw_rows, ["statuses", "default_instance", "confirming",
                                        "activities", "refreshed_at", "selected", "menu",
                                        "results"])
        model.observe(self._draw_selection, ["selected", "confirming_selected", "statuses"])
        model.observe(self._draw_status, ["activities", "statuses", "message", "message_kind",
                                          "field_errors", "refreshed_at", "refresh_error",
                                          "default_instance"])
        model.observe(self._clear_form, "last_created")
        self.b_refresh.on_click(self.guard(lambda _: model.poke(force=True)))
        # The frontend counts its views of this widget: live refresh while > 0.
        self.observe(self._views_changed, "_view_count")
        self._view_count = 0
        self._draw_rows()
        self._draw_selection()
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

    def _select_all_changed(self, change):
        """Ticked: every row. Unticked by hand: none (not when drawn so because a row was
        unticked: then not every row is selected any more)."""
        m = self.model
        if change["new"]:
            m.select_all(True)
        elif m.statuses and set(m.selected) >= set(m.names()):
            m.select_all(False)

    def close(self):
        self.model.set_visible(self, False)
        for name in ("_draw_rows", "_draw_selection", "_draw_status", "_clear_form"):
            try:
                self.model.unobserve(getattr(self, name))
            except ValueError:
                pass
        super().close()

    # --- drawing (any thread; the model serializes the calls) ---------------------
    @_drawing
    def _draw_rows(self, change=None):
        # With many rows, what one cell or one action changed redraws its row only:
        # a cell's end (its result) must not cost a pass over every row.
        m = self.model
        what = change["name"] if change else None
        if what == "results" and self._drawn:
            old, new = change["old"], change["new"]
            names = {n for n in set(old) | set(new) if old.get(n) != new.get(n)}
            self._draw_each([row for row in m.statuses if row.name in names and
                             row.name in self.rows])
        elif what != "refreshed_at":  # that changes only the text of an empty table
            wanted = self._draw_each(m.statuses)
            names = {r.name for r in wanted}
            for name in list(self.rows):
                if name not in names:
                    self.rows.pop(name).close()
                    self._drawn.pop(name, None)
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

    def _draw_each(self, rows):
        """Draw each of ``rows`` (InstanceStatus) whose inputs changed; their InstanceRows."""
        m = self.model
        default, confirming, activities = m.default_instance, m.confirming, m.activities
        selected, menu, results = set(m.selected), m.menu, m.results
        drawn = []
        for row in rows:
            r = self.rows.get(row.name)
            if r is None:
                r = self.rows[row.name] = InstanceRow(self, row.name)
            args = (row, row.name == default, confirming.get(row.name, ""),
                    activities.get(row.name, ""), row.name in selected, menu == row.name,
                    results.get(row.name))
            key = args + (format_duration(row.uptime),)
            if self._drawn.get(row.name) != key:
                r.show(*args)
                self._drawn[row.name] = key
                give_way()  # drawn from the refresh thread: a cell waiting goes first
            drawn.append(r)
        return drawn

    @_drawing
    def _draw_selection(self, change=None):
        """The tick in the header, and the line that acts on the selected rows."""
        m = self.model
        names = m.names()
        selected = [name for name in m.selected if name in names]
        every = bool(names) and len(selected) == len(names)
        if self.select_all.value != every:
            self.select_all.value = every
        action = m.confirming_selected
        if action and selected:
            busy = [row.name for row in m.statuses
                    if row.name in selected and row.status == "busy"]
            what = BULK_QUESTIONS[action] % esc("%s (%s)" % (counted(selected), listed(selected)))
            if busy:
                ended = cells_ended(busy)
                what += esc(" %s%s." % (ended[0].upper(), ended[1:]))
            if self.selected_ask.value != what:
                self.selected_ask.value = what
            wanted = (self.selected_ask, self.b_selected_yes[action], self.b_selected_no)
        else:
            text = ("<b>%d selected</b> (%s):" % (len(selected), esc(listed(selected)))
                    if selected else "<span style='color:#757575'>Tick rows to restart, reset "
                                     "or delete several at once:</span>")
            if self.selection.value != text:
                self.selection.value = text
            for b in self.b_selected.values():
                b.disabled = not selected
            wanted = (self.selection, self.b_selected["reset"], self.b_selected["restart"],
                      self.b_selected["delete"])
        if tuple(self.bulk.children) != wanted:
            self.bulk.children = wanted
        display = "flex" if names else "none"
        if self.bulk.layout.display != display:
            self.bulk.layout.display = display

    @_drawing
    def _draw_status(self, change=None):
        m = self.model
        names = m.names()
        default = esc(m.default_instance)
        if m.refreshed_at and m.default_instance not in names:
            default += " <i>(not created yet)</i>"
        self.default_label.value = "default instance: <b>%s</b>" % default
        if m.refresh_error:
            updated = "<span style='color:#c62828'>%s</span>" % esc(m.refresh_error)
        elif m.refreshed_at:
            when = datetime.datetime.fromtimestamp(m.refreshed_at).strftime("%H:%M:%S")
            updated = "<span style='color:#757575'>updated %s</span>" % when
        else:
            updated = ""
        self.updated.value = updated
        errors = m.field_errors
        self.field_errors.value = "".join(
            "<div style='color:#c62828'>%s: %s</div>" % (LABELS[f], esc(errors[f]))
            for f in FIELDS if f in errors)
        for f, t in self.fields.items():
            t.layout.border = "1px solid #c62828" if f in errors else None
        # Actions on an instance show on its row; here only those without one (create).
        self.activity.value = "<br>".join(spinning(text) for name, text
                                          in sorted(m.activities.items()) if name not in names)
        if m.message:
            color = "#c62828" if m.message_kind == "error" else "#2e7d32"
            mark = "&#10006;" if m.message_kind == "error" else "&#10004;"
            self.message.value = "<span style='color:%s'>%s %s</span>" % (
                color, mark, esc(m.message))
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

