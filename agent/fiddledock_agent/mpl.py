"""matplotlib figures beneath the cell, the way IPython's inline backend shows them.

The container runs matplotlib with its Agg backend (``MPLBACKEND=Agg`` in
the container's environment, so child processes draw off-screen too).
When user code imports ``matplotlib.pyplot``, ``patch_pyplot`` replaces
``pyplot.show`` (and ``Figure.show``): the open figures go out as PNG
``display`` events and are closed. At the end of a cell, figures still open
and not yet shown go out the same way and everything is closed, so a figure
never shows up again in a later cell. A ``Figure`` as a cell's last
expression or in ``display()`` becomes a PNG through a registered formatter.
"""

import io
import sys

from fiddledock_agent import display as display_mod

# Figures shown during the current cell (a WeakSet made with the first one:
# weakref is matplotlib's import, an idle worker does without it).
_shown = None


def _figure_type():
    module = sys.modules.get("matplotlib.figure")
    return getattr(module, "Figure", None)


def png(fig):
    """The figure as PNG bytes; None for an empty figure (shown as text, as inline does)."""
    if not fig.axes and not getattr(fig, "lines", None) and not fig.images:
        return None
    buf = io.BytesIO()
    fig.canvas.print_figure(buf, format="png", bbox_inches="tight",
                            facecolor=fig.get_facecolor(), edgecolor=fig.get_edgecolor())
    return buf.getvalue()


def _format_figure(obj):
    global _shown
    figure = _figure_type()
    if figure is None or not isinstance(obj, figure):
        return None
    if _shown is None:
        import weakref
        _shown = weakref.WeakSet()
    _shown.add(obj)
    data = png(obj)
    return {"image/png": data} if data else None


display_mod.register_formatter(_format_figure)


def open_figures():
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    if helpers is None:
        return []
    return [manager.canvas.figure for manager in helpers.Gcf.get_all_fig_managers()]


class Inline:
    """pyplot.show() and end-of-cell figures for one worker."""

    def __init__(self, worker):
        self.worker = worker

    def install(self, hooks):
        hooks.after_import("matplotlib.pyplot", self.patch_pyplot)

    def patch_pyplot(self, pyplot):
        inline = self
        real_show = pyplot.show

        def show(*args, **kwargs):
            """Show the open figures beneath the cell, then close them."""
            inline.show_open(skip_shown=False)

        show.__wrapped__ = real_show
        pyplot.show = show
        figure = _figure_type()
        if figure is not None:
            def figure_show(self, warn=True):
                """Show this figure beneath the cell."""
                inline.worker.display(self)

            figure.show = figure_show

    def show_open(self, skip_shown):
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        try:
            for fig in open_figures():
                if not (skip_shown and _shown is not None and fig in _shown):
                    self.worker.display(fig)
        finally:
            pyplot.close("all")

    def after_cell(self, worker):
        try:
            if "matplotlib.pyplot" in sys.modules:
                self.show_open(skip_shown=True)
        finally:
            if _shown is not None:
                _shown.clear()
