"""Hints under a %%dockerrun cell's error for what people paste from ordinary notebooks."""

import pytest

from fiddledock_magic import CellError


def test_missing_module_names_dockerrun_install(run, unique_name):
    with pytest.raises(CellError) as info:
        run("import sklearn.linear_model", unique_name)
    assert info.value.ename == "ModuleNotFoundError"
    assert info.value.evalue.splitlines() == [
        "No module named 'sklearn'",
        "Hint: this instance has no network, so pip cannot fetch sklearn here. Install it "
        "from the notebook, in a cell of its own: %%dockerrun install %s scikit-learn"
        % unique_name]
    # shown beneath the cell, after the exception's own line
    _, _, err = run("import fdnosuchmodule", unique_name, "--no-raise")
    assert "ModuleNotFoundError: No module named 'fdnosuchmodule'" in err
    assert "%%dockerrun install %s fdnosuchmodule" % unique_name in err
    # the instance goes on
    value, _, _ = run("1 + 1", unique_name)
    assert repr(value) == "2"


def test_shell_escape_and_magic_lines_say_where_they_run(run, unique_name):
    with pytest.raises(CellError) as info:
        run("x = 1\n!pip install pandas seaborn", unique_name)
    assert info.value.ename == "SyntaxError"
    hint = info.value.evalue.splitlines()[-1]
    assert "run on the notebook's machine" in hint
    assert hint.endswith("%%dockerrun install %s pandas seaborn" % unique_name)
    with pytest.raises(CellError) as info:
        run("!ls -l /tmp", unique_name)
    assert "runs on the notebook's machine, not here" in info.value.evalue
    assert "subprocess.run('ls -l /tmp', shell=True)" in info.value.evalue
    with pytest.raises(CellError) as info:
        run("%matplotlib inline\nimport matplotlib.pyplot as plt", unique_name)
    assert "%matplotlib is an IPython magic and is not needed here" in info.value.evalue
    with pytest.raises(CellError) as info:
        run("%timeit sum(range(10))", unique_name)
    assert "%timeit is an IPython magic; magics run on the notebook side" in \
        info.value.evalue
    # an ordinary syntax error gets no hint
    with pytest.raises(CellError) as info:
        run("x = (1,", unique_name)
    assert "Hint" not in info.value.evalue
