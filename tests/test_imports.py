"""The import graph: every module imports on its own, and no two modules import each other.

A cycle makes what a module can use at import time depend on which module
was imported first; it shows up only for some entry points (a test, the
command line), so it is looked for in the source instead: every import
statement, also those inside functions.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

import fiddledock_agent
import fiddledock_magic

PACKAGES = [pathlib.Path(p.__file__).parent for p in (fiddledock_magic, fiddledock_agent)]


def modules(folder):
    """{dotted module name: path} of one package folder (no subpackages here)."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        name = folder.name if path.stem == "__init__" else "%s.%s" % (folder.name, path.stem)
        found[name] = path
    return found


def imported(name, path, known):
    """The modules of ``known`` that the module ``name`` imports, anywhere in its text."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = parent + ("." + base if base else "")
            found.add(base)
            # `from package import module` imports that module too
            found.update("%s.%s" % (base, alias.name) for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph(folder):
    known = modules(folder)
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(graph):
    """Every import cycle, once each, as a list of modules starting at its smallest."""
    found = []
    for start in sorted(graph):
        # The modules after start from which start can be reached again: a cycle
        # through start goes through these only (cycles through smaller ones are found).
        back, todo = set(), [start]
        while todo:
            node = todo.pop()
            for other in graph:
                if other > start and other not in back and node in graph[other]:
                    back.add(other)
                    todo.append(other)

        def visit(node, path):
            for nxt in sorted(graph[node]):
                if nxt == start:
                    found.append(path)
                elif nxt in back and nxt not in path:
                    visit(nxt, path + [nxt])
        visit(start, [start])
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_absolute_imports_are_both_seen(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "__init__.py").write_text("from ._a import x\n")
    (folder / "_a.py").write_text("def f():\n    from . import _b\n")
    (folder / "_b.py").write_text("import pkg._a\nfrom pkg import _c\n")
    (folder / "_c.py").write_text("import os\n")
    assert import_graph(folder) == {"pkg": {"pkg._a"}, "pkg._a": {"pkg", "pkg._b"},
                                    "pkg._b": {"pkg", "pkg._a", "pkg._c"}, "pkg._c": set()}


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda f: f.name)
def test_no_import_cycles(folder):
    # A package's __init__ is imported before any of its modules, so an edge to
    # the package itself closes no cycle that matters; only module-to-module ones.
    graph = import_graph(folder)
    graph = {name: {m for m in deps if m != folder.name} for name, deps in graph.items()}
    assert len(graph) > 5  # the package's modules were found
    assert cycles(graph) == []


@pytest.mark.parametrize("name", sorted(modules(PACKAGES[0])))
def test_each_module_imports_on_its_own(name):
    done = subprocess.run([sys.executable, "-c", "import %s" % name], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
