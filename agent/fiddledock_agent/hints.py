"""Friendly hints under a cell's error, for what people paste from ordinary notebooks.

* ``ModuleNotFoundError``: the instance has no network, so the hint names
  ``%dockerrun install NAME package`` (with the usual name on PyPI when the
  import name differs, as sklearn / scikit-learn).
* A line starting with ``!`` or ``%`` (a SyntaxError in plain Python): shell
  escapes and magics belong to IPython on the notebook side; the hint says
  what to use in an instance instead.

``explain(error, exc, source)`` adds the hint to the error report the worker
sends (its value, on a line of its own, as Python 3.11 shows notes).
"""

import socket

# Import names whose distribution on PyPI is called otherwise.
DISTRIBUTIONS = {
    "sklearn": "scikit-learn", "PIL": "pillow", "cv2": "opencv-python-headless",
    "yaml": "pyyaml", "bs4": "beautifulsoup4", "skimage": "scikit-image",
    "dateutil": "python-dateutil", "Crypto": "pycryptodome", "attr": "attrs",
    "dotenv": "python-dotenv", "docx": "python-docx", "serial": "pyserial",
}
POOLED_HOSTNAME = "sandbox"  # a pooled container's hostname: its instance name is not known


def instance_name():
    """This instance's name as the notebook knows it (its hostname), or NAME."""
    name = socket.gethostname()
    return name if name and name != POOLED_HOSTNAME else "NAME"


def explain(error, exc, source):
    """The error report with a hint added where one helps; the same report otherwise."""
    hint = None
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        hint = _missing_module(exc.name.split(".")[0])
    elif isinstance(exc, SyntaxError) and exc.lineno:
        lines = source.splitlines()
        if 0 < exc.lineno <= len(lines):
            hint = _notebook_syntax(lines[exc.lineno - 1].strip())
    if hint:
        error["evalue"] = "%s\n%s" % (error.get("evalue", ""), hint)
        error["traceback"] = list(error.get("traceback") or []) + [hint]
    return error


def _missing_module(module):
    package = DISTRIBUTIONS.get(module, module)
    return ("Hint: this instance has no network, so pip cannot fetch %s here. Install it from "
            "the notebook, in a cell of its own: %%dockerrun install %s %s"
            % (module, instance_name(), package))


def _notebook_syntax(line):
    if line.startswith("!"):
        words = line[1:].split()
        if words[:2] in (["pip", "install"], ["pip3", "install"]) and len(words) > 2:
            return _pip_hint(words[2:])
        return ("Hint: a line starting with ! is an IPython shell escape; it runs on the "
                "notebook's machine, not here. In an instance run the command with "
                "subprocess.run(%r, shell=True)" % line[1:].strip())
    if line.startswith("%"):
        words = line.lstrip("%").split()
        magic = words[0] if words else ""
        if magic == "pip" and words[1:2] == ["install"] and len(words) > 2:
            return _pip_hint(words[2:])
        if magic == "matplotlib":
            return ("Hint: %matplotlib is an IPython magic and is not needed here: figures "
                    "show beneath the cell on plt.show() or when the cell ends")
        return ("Hint: %%%s is an IPython magic; magics run on the notebook side, not in "
                "an instance. Use it in a cell without %%%%dockerrun, or write plain Python "
                "here" % magic)
    return None


def _pip_hint(packages):
    return ("Hint: this instance has no network, and ! and %% lines run on the notebook's "
            "machine. Install from the notebook, in a cell of its own: "
            "%%dockerrun install %s %s" % (instance_name(), " ".join(packages)))
