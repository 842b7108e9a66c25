"""The ``%%dockerrun`` cell magic and ``%dockerrun`` line magic: parse, call, render.

Nothing here talks to Docker: the instance layer does. Arguments go through
IPython's ``magic_arguments``, so ``%%dockerrun?`` prints real help and a bad
argument is a ``UsageError``.
"""

import ast
import fnmatch
import math
import re
import shlex
import sys
import time

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ._commands import LineCommands, parse_words, split_line
from ._errors import FiddleDockError, InstanceLost, UsageError
from ._outcome import cell_outcome, lost_error
from ._panel_model import record_result
from ._render import CellRenderer
from ._spec import InvalidSetting, check_name


# What IPython makes of {students} or $students in a magic's line when the
# variable holds a list of names: "['alice', 'bob']" (a tuple or set alike).
_LITERAL = re.compile(r"[\[({][^\])}]*[\])}]")


def expand_lists(line):
    """``(line, listed)``: line with each Python list of names in it as those names,
    space-separated; listed: whether there was one."""
    listed = []

    def names(match):
        try:
            value = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return match.group(0)
        if not isinstance(value, (list, tuple, set, frozenset)) or \
                not all(isinstance(v, str) for v in value):
            return match.group(0)
        if not value:
            raise UsageError("the list of instance names is empty")
        listed.append(True)
        return " ".join(shlex.quote(v) for v in (value if isinstance(value, (list, tuple))
                                                 else sorted(value)))
    line = _LITERAL.sub(names, line)
    return line, bool(listed)


def is_pattern(word):
    return "*" in word or "?" in word


@magics_class
class DockerRunMagics(Magics):
    def __init__(self, shell, manager):
        super().__init__(shell)
        self.manager = manager
        self.commands = LineCommands(manager, shell)

    @property
    def config_obj(self):
        return self.manager.config

    @magic_arguments("%dockerrun")  # usage reads "%%dockerrun": the options are the cell's
    @argument("names", nargs="*", metavar="NAME",
              help="Instance to run in (default: the current default instance), created on "
                   "first use. Several names, a pattern (student*: this notebook's instances "
                   "that match) or a list variable ({students}) run the cell in each, at once.")
    @argument("--timeout", type=float, default=None, metavar="SECONDS",
              help="Time limit for this cell, 0 for none (default: DockerRun.timeout).")
    @argument("--image", default=None,
              help="Image for the instance; only when this cell creates it.")
    @argument("--reset", action="store_true",
              help="Clear the instance's variables before running (its files stay).")
    @argument("--no-raise", action="store_true",
              help="Show an error but do not fail the cell.")
    @line_cell_magic
    def dockerrun(self, line, cell=None):
        """Run the cell as Python in a Docker container (an "instance").

        As the first line of a cell, %%dockerrun NAME runs the rest of the cell
        in instance NAME (created on first use), its output beneath the cell.
        As a line, %dockerrun SUBCOMMAND manages instances: %dockerrun help
        lists the subcommands, with an example of each.
        """
        if cell is None:
            return self._line(line)
        # Split as the line magic does (quotes removed, unbalanced ones a UsageError);
        # parse_argstring would keep the quotes in the values.
        line, listed = expand_lists(line)
        args = parse_words(self.dockerrun.parser, split_line(line))
        timeout = self.config_obj.timeout if args.timeout is None else args.timeout
        if not math.isfinite(timeout) or timeout < 0:
            raise UsageError("--timeout must be 0 (no limit) or a positive number of seconds")
        if len(args.names) > 1 or any(is_pattern(word) for word in args.names) \
                or listed:
            return self._run_many(self._names(args.names), cell, timeout, args)
        try:
            name = check_name(args.names[0] if args.names else self.config_obj.default_instance)
        except InvalidSetting as exc:
            raise UsageError(str(exc)) from None
        return self._run(name, cell, timeout, args)

    def _names(self, words):
        """The instances words name: names, and patterns matched against this
        notebook's instances; each once, in order. UsageError for a bad one."""
        names, known = [], None
        for word in words:
            if is_pattern(word):
                known = self.manager.names() if known is None else known
                matched = fnmatch.filter(known, word)
                if not matched:
                    raise UsageError("no instance of this notebook matches %r (it has: %s)"
                                     % (word, ", ".join(known) or "none yet"))
            else:
                try:
                    matched = [check_name(word)]
                except InvalidSetting as exc:
                    raise UsageError(str(exc)) from None
            names.extend(n for n in matched if n not in names)
        return names

    def _run_many(self, names, cell, timeout, args):
        from ._multirun import ManyRun
        run = ManyRun(self.manager, self.shell, names, cell, timeout, image=args.image,
                      reset=args.reset, cell_name=self._cell_name())
        try:
            summary = run.run()
        except FiddleDockError as exc:
            return self._fail(exc, args.no_raise)
        print(summary)
        return None

    def _line(self, line):
        try:
            return self.commands.run(expand_lists(line)[0])  # create {students}
        except InvalidSetting as exc:
            raise UsageError(str(exc)) from None

    def _run(self, name, cell, timeout, args):
        renderer = CellRenderer(self.shell)
        instance = None
        started = time.monotonic()
        try:
            instance = self.manager.get(name, image=args.image, notice=renderer.notice,
                                        progress=renderer.progress)
            instance.ended_by = None  # from here on, an action on the instance ends this cell
            done = instance.execute(cell, renderer, timeout=timeout, reset=args.reset,
                                    cell_name=self._cell_name(),
                                    output_limit=self.config_obj.output_limit,
                                    interrupt_grace=self.config_obj.interrupt_grace)
        except InstanceLost as exc:  # the container stopped under the cell
            renderer.finish()
            self._record(name, "error", started)
            return self._fail(lost_error(exc, instance and instance.ended_by), args.no_raise)
        except FiddleDockError as exc:
            renderer.finish()
            self._record(name, "error", started)
            return self._fail(exc, args.no_raise)
        finally:
            renderer.finish()
        ended_by, instance.ended_by = instance.ended_by, None
        if done.get("status") != "ok" and done.get("notice"):
            renderer.notice(done["notice"])
        status, error = cell_outcome(done, instance.name, timeout, ended_by, self.shell)
        self._record(name, status, started)
        if error is None:
            return renderer.value
        return self._fail(error, args.no_raise)

    def _record(self, name, status, started):
        record_result(self.manager, name, status, time.monotonic() - started)

    def _cell_name(self):
        """The running cell's name as IPython's own tracebacks give it ("In[5]")."""
        frame = sys._getframe(1)
        while frame is not None:  # the cell's code called this magic
            named = self.shell.compile.format_code_name(frame.f_code.co_filename)
            if named:
                return named[1]
            frame = frame.f_back
        return "In[%s]" % self.shell.execution_count

    def _fail(self, error, no_raise):
        if not no_raise:
            raise error
        for text in error._render_traceback_():
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
        return None


# magic_arguments heads the help with "::" (reStructuredText) and the usage line.
DockerRunMagics.dockerrun.__doc__ = DockerRunMagics.dockerrun.__doc__.replace(
    "::\n\n", "Usage:\n", 1)
