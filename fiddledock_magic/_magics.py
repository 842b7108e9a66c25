"""The ``%%dockerrun`` cell magic and ``%dockerrun`` line magic: parse, call, render.

Nothing here talks to Docker: the instance layer does. Arguments go through
IPython's ``magic_arguments``, so ``%%dockerrun?`` prints real help and a bad
argument is a ``UsageError``.
"""

import math
import sys

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from . import _traceback
from ._commands import LineCommands, parse_words, split_line
from ._errors import (CellEnded, CellError, CellKilled, CellTimeout, FiddleDockError,
                      InstanceLost, UsageError)
from ._render import CellRenderer
from ._spec import InvalidSetting, check_name


def remote_traceback(error, instance, shell):
    """The lines of a container's traceback, drawn as a local cell's."""
    frames = error.get("frames")
    if frames is None:  # an agent that sends text only
        lines = list(error.get("traceback") or [])
        if lines:
            lines[-1] = "\x1b[0;31m%s\x1b[0m" % lines[-1]
        return lines
    return _traceback.render(error.get("ename") or "Error", error.get("evalue") or "", frames,
                             instance, shell)


def remote_error(error, instance, shell):
    """A CellError whose class name is the container exception's name."""
    ename = str(error.get("ename") or "Error")
    if not ename.isidentifier():
        ename = "Error"
    cls = type(ename, (CellError,), {"__module__": "fiddledock.container"})
    return cls(ename, error.get("evalue", ""), remote_traceback(error, instance, shell))


@magics_class
class DockerRunMagics(Magics):
    def __init__(self, shell, manager):
        super().__init__(shell)
        self.manager = manager
        self.commands = LineCommands(manager)

    @property
    def config_obj(self):
        return self.manager.config

    @magic_arguments("%dockerrun")  # usage reads "%%dockerrun": the options are the cell's
    @argument("name", nargs="?", default=None,
              help="Instance to run in (default: the current default instance). "
                   "Created on first use.")
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
        args = parse_words(self.dockerrun.parser, split_line(line))
        try:
            name = check_name(args.name or self.config_obj.default_instance)
        except InvalidSetting as exc:
            raise UsageError(str(exc)) from None
        timeout = self.config_obj.timeout if args.timeout is None else args.timeout
        if not math.isfinite(timeout) or timeout < 0:
            raise UsageError("--timeout must be 0 (no limit) or a positive number of seconds")
        return self._run(name, cell, timeout, args)

    def _line(self, line):
        try:
            return self.commands.run(line)
        except InvalidSetting as exc:
            raise UsageError(str(exc)) from None

    def _run(self, name, cell, timeout, args):
        renderer = CellRenderer(self.shell)
        instance = None
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
            ended_by = instance and instance.ended_by
            if ended_by:  # restarted or deleted (from the panel, say) while it ran
                return self._fail(CellEnded(exc.name, ended_by), args.no_raise)
            return self._fail(InstanceLost(exc.name, "%s. The next cell starts it again from "
                                           "scratch: its variables and files are gone"
                                           % exc.reason), args.no_raise)
        except FiddleDockError as exc:
            renderer.finish()
            return self._fail(exc, args.no_raise)
        finally:
            renderer.finish()
        ended_by, instance.ended_by = instance.ended_by, None
        status = done.get("status")
        if status == "ok":
            return renderer.value
        if done.get("notice"):
            renderer.notice(done["notice"])
        reason = done.get("reason")
        if status in ("error", "interrupted"):
            error = remote_error(done.get("error") or {"ename": "KeyboardInterrupt"},
                                 instance.name, self.shell)
        elif status == "timeout":  # KeyboardInterrupt stopped it: show where it was
            error = CellTimeout(
                reason or "timed out after %g s and was stopped; its variables are kept" % timeout,
                remote_traceback(done.get("error") or {}, instance.name, self.shell))
        elif ended_by and status == "killed":  # reset (from the panel, say) while it ran
            error = CellEnded(instance.name, ended_by)
        else:  # the worker died or was killed: say why, and that the state is gone
            cls = CellTimeout if done.get("cause") == "timeout" else CellKilled
            error = cls("the cell %s; its variables and imports are gone (its files are "
                        "kept), and the next cell starts a fresh Python in this instance"
                        % (reason or "died"))
        return self._fail(error, args.no_raise)

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
