"""What a cell still gets from a worker that imports little until a cell needs it.

An idle instance keeps its worker, so the worker leaves linecache, traceback,
pprint, uuid, getpass and threading for the first cell that uses them (see
worker.py and streams.py), and shows a container that fits a line as its
repr without importing pprint. Display handles, getpass and tracebacks of a
first failing cell are checked in test_rich.py and test_cells.py; these are
the rest.
"""

import pprint
import threading

import pytest

from conftest import printed, stream_text, wait_for


def test_a_warning_shows_the_line_of_the_cell_that_warned(run, unique_name):
    run("print('hi')", unique_name)
    _, _, err = run("import warnings\nwarnings.warn('careful')", unique_name)
    assert "UserWarning: careful" in err
    assert "warnings.warn('careful')" in err  # the cell's own line, found through linecache


def test_threads_of_a_cell_print_beneath_it(run, unique_name):
    code = ("import threading\nt = threading.Thread(target=print, args=('from a thread',))\n"
            "t.start()\nt.join()\nprint(threading.current_thread().name)")
    _, out, _ = run(code, unique_name)
    assert out == "from a thread\nMainThread\n"


def test_a_partial_line_shows_while_the_cell_still_runs(kernel, unique_name):
    code = ("%%%%dockerrun %s\nimport time\nprint('Working...', end='')\ntime.sleep(4)\n"
            "print(' done')" % unique_name)
    live = []
    cell = threading.Thread(target=kernel.execute, args=(code,), kwargs={"collect": live})
    cell.start()
    try:
        wait_for(printed(live, "Working..."), "the line without its newline", 60)
        assert " done" not in stream_text(list(live))  # shown while the cell sleeps
    finally:
        cell.join(90)
    assert stream_text(live) == "Working... done\n"


@pytest.mark.parametrize("expression", [
    "{'a': 1, 'b': [1, 2], 'c': (3,)}", "[{'x': \"it's\"}, {1}, frozenset(), ()]",
    "{'key%d' % i: list(range(5)) for i in range(6)}", "list(range(40))"])
def test_container_values_show_as_pprint_shows_them(run, unique_name, expression):
    value, _, _ = run(expression, unique_name)
    assert repr(value) == pprint.pformat(eval(expression), width=79, sort_dicts=False)


def test_a_list_that_holds_itself_shows_the_recursion(run, unique_name):
    value, _, _ = run("x = [1]\nx.append(x)\nx", unique_name)
    assert repr(value).startswith("[1, <Recursion on list with id=")
