"""A cell's exception as the notebook draws it.

Frames of the cell carry the notebook's name for it ("In[5]") and the
editor's line numbers with a few lines around the failing one; frames of the
agent itself are left out.
"""

# "<cell 3>" -> (the name the notebook shows for that cell, e.g. "In[5]", and
# the editor's line number of the cell's first line): tracebacks point there.
CELL_LABELS = {}
CONTEXT = 2  # lines shown before and after a cell's failing line, as IPython does


def cell_label(header, filename):
    label = header.get("cell_name")
    first = header.get("first_line")
    if not isinstance(label, str) or not 0 < len(label) <= 40:
        label = filename
    if type(first) is not int or not 0 < first < 1000000:
        first = 1
    return label, first


def _frame(filename, lineno, name):
    """One traceback frame as the notebook renders it: a cell's with editor lines around it."""
    import linecache  # the worker imports these only once a cell fails
    if filename in CELL_LABELS and isinstance(lineno, int):
        label, first = CELL_LABELS[filename]
        lines = []
        for n in range(max(1, lineno - CONTEXT), lineno + CONTEXT + 1):
            text = linecache.getline(filename, n)
            if text:
                lines.append([n + first - 1, text.rstrip("\r\n")[:500]])
        return {"cell": label, "line": lineno + first - 1, "name": name, "lines": lines}
    text = linecache.getline(filename, lineno).strip() if isinstance(lineno, int) else ""
    return {"file": filename[:500], "line": lineno if isinstance(lineno, int) else 0,
            "name": name, "lines": [[lineno, text[:500]]] if text else []}


def _frames(exc, stack):
    frames = [_frame(f.filename, f.lineno, f.name) for f in stack[-100:]]
    if isinstance(exc, SyntaxError) and exc.filename:
        frames.append(_frame(exc.filename, exc.lineno, None))
    return frames


def format_error(exc, filename):
    """ename, evalue, traceback lines and frames, without the agent's own frames."""
    import traceback
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell "):
        tb = tb.tb_next
    report = traceback.TracebackException(type(exc), exc, tb)
    # Frames of the agent (the SIGINT handler that raised KeyboardInterrupt,
    # display() internals) mean nothing to the user.
    report.stack = traceback.StackSummary.from_list(
        [f for f in report.stack if not f.filename.startswith("<fiddledock_agent/")])
    text = "".join(report.format()).rstrip("\n")
    return {
        "ename": type(exc).__name__,
        # A SyntaxError's frames say where: its value is the message alone.
        "evalue": str(exc.msg) if isinstance(exc, SyntaxError) else str(exc),
        "traceback": text.split("\n"),
        "frames": _frames(exc, report.stack),
    }

