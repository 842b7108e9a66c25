"""The ``%dockerrun SUBCOMMAND`` line magic: parsing and dispatch.

Each subcommand is a method ``cmd_<name>`` taking the parsed arguments; the
instance layer does the work. Parsing uses IPython's MagicArgumentParser, so
a bad subcommand or value is a short ``UsageError``.
"""

import argparse
import difflib
import html
import shlex
import sys
import textwrap

from IPython.core.magic_arguments import MagicArgumentParser
from IPython.display import publish_display_data

from . import _files, _install, _package_image
from ._config import MAX_POOL_SIZE
from ._errors import ImageNotFound, IPythonUsageError, UsageError, plain_text
from ._spec import NETWORKS, RUNTIMES, InstanceSpec, check_name, shown
from ._status import html_table, text_table


EXAMPLES = {
    "help": "%dockerrun help",
    "list": "%dockerrun list",
    "create": "%dockerrun create alice --memory 1g --cpus 0.5",
    "delete": "%dockerrun delete alice",
    "restart": "%dockerrun restart alice",
    "reset": "%dockerrun reset alice",
    "interrupt": "%dockerrun interrupt alice",
    "use": "%dockerrun use alice",
    "cleanup": "%dockerrun cleanup",
    "pool": "%dockerrun pool 3",
    "put": "%dockerrun put data.csv alice:/home/sandbox/data.csv",
    "get": "%dockerrun get alice:/home/sandbox/results results",
    "panel": "%dockerrun panel",
    "install": "%dockerrun install alice pandas seaborn",
    "image": "%dockerrun image build class:1 scikit-learn -r requirements.txt",
}


def build_parser():
    parser = MagicArgumentParser(prog="%dockerrun", add_help=False,
                                 description="Manage FiddleDock instances.")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.add_parser("help", help="Show this help.", add_help=False)
    sub.add_parser("list", help="Show the instances of this notebook.", add_help=False)
    create = sub.add_parser("create", help="Create an instance; several names create several "
                                           "at once, with these settings.", add_help=False)
    create.add_argument("name", nargs="+")
    create.add_argument("--image", help="Image (default: DockerRun.image).")
    create.add_argument("--memory", help="Memory limit, e.g. 512m or 1g (no extra swap).")
    create.add_argument("--cpus", type=float, help="CPU limit in cores, e.g. 1 or 0.5.")
    create.add_argument("--pids", type=int, help="Process limit, at least 16.")
    create.add_argument("--disk", help="Space for files, in the home folder and in /tmp "
                                       "each, e.g. 256m.")
    create.add_argument("--network", choices=NETWORKS,
                        help="none (default): no network; bridge: the internet.")
    create.add_argument("--runtime", choices=RUNTIMES,
                        help="runc (default) or runsc: gVisor, a stronger sandbox.")
    create.add_argument("--env", action="append", default=[], metavar="K=V",
                        help="An environment variable; repeat for more.")
    delete = sub.add_parser("delete", help="Delete an instance (or --all).", add_help=False)
    delete.add_argument("name", nargs="?")
    delete.add_argument("--all", action="store_true",
                        help="Delete every instance of this notebook.")
    for cmd, text in (("restart", "Start the instance afresh (same settings): its variables "
                                  "and files are lost."),
                      ("reset", "Forget the instance's variables, keep its files; a cell "
                                "running in it is stopped."),
                      ("interrupt", "Stop the cell running in NAME, as the stop button does "
                                    "(also another kernel's cell)."),
                      ("use", "Make NAME the default for a bare %%dockerrun.")):
        p = sub.add_parser(cmd, help=text, add_help=False)
        p.add_argument("name")
    cleanup = sub.add_parser("cleanup", add_help=False,
                             help="Remove this notebook's stopped instances and leftover "
                                  "pool containers (running instances stay).")
    cleanup.add_argument("--all-notebooks", action="store_true",
                         help="Every notebook's, not just this one's.")
    pool = sub.add_parser("pool", add_help=False,
                          help="Keep N instances started in the background; no N: show it.")
    pool.add_argument("n", nargs="?", type=int, metavar="N")
    put = sub.add_parser("put", add_help=False,
                         help="Copy a file or folder into an instance: put LOCAL NAME:PATH "
                              "[--force] (the instance must exist).")
    put.add_argument("local", metavar="LOCAL")
    put.add_argument("target", metavar="NAME:PATH")
    put.add_argument("--force", action="store_true",
                     help="Replace the file or folder PATH names if it exists.")
    get = sub.add_parser("get", add_help=False,
                         help="Copy a file or folder out of an instance: get NAME:PATH LOCAL "
                              "[--force]; into an existing folder LOCAL it is named after "
                              "PATH's last part.")
    get.add_argument("source", metavar="NAME:PATH")
    get.add_argument("local", metavar="LOCAL")
    get.add_argument("--force", action="store_true",
                     help="Replace that one file or folder if it exists (never merged into).")
    install = sub.add_parser("install", add_help=False,
                             help="Install packages in an instance that has no network: pip "
                                  "downloads wheels here (your pip settings, wheels only, "
                                  "cached), they are installed in the instance's home folder; "
                                  "pip options pass through: --index-url URL, --no-index "
                                  "--find-links DIR, -r requirements.txt ...")
    install.add_argument("name")
    install.add_argument("pip", nargs=argparse.REMAINDER, metavar="PKG... [pip options]")
    image = sub.add_parser("image", add_help=False,
                           help="image build TAG PKG... [pip options]: an image FROM "
                                "DockerRun.image with these packages (as install gets them; "
                                "no network in the build; the same inputs again are a cache "
                                "hit), for --image TAG")
    image.add_argument("action", choices=("build",))
    image.add_argument("tag", metavar="TAG")
    image.add_argument("pip", nargs=argparse.REMAINDER, metavar="PKG... [pip options]")
    sub.add_parser("panel", add_help=False,
                   help="Show the instance panel (ipywidgets): every instance with its "
                        "status and resources; create, restart, reset, delete, make default.")
    return parser


def split_line(line):
    """The words of a magic's line, as a shell splits them; UsageError if it cannot."""
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError("cannot parse %s: %s" % (shown(line), exc)) from None


def parse_words(parser, words, limit=200):
    """parser.parse_args of split words; its UsageError cut to ``limit`` characters
    (argparse quotes the words it refuses, and a word may be huge), with a
    "did you mean" for a mistyped option."""
    try:
        return parser.parse_args(words)
    except IPythonUsageError as exc:  # argparse's, raised by MagicArgumentParser
        text = str(exc)
        text = text if len(text) <= limit else text[:limit - 3] + "..."
        raise UsageError(text + _did_you_mean_option(parser, words)) from None


def _did_you_mean_option(parser, words):
    """' (did you mean '--memory'?)' for the first option word that is close to a known one."""
    known = set(parser._option_string_actions)
    sub = _subparser(parser, words[0]) if words else None
    if sub is not None:
        known.update(sub._option_string_actions)
    for word in words:
        option = word.split("=", 1)[0]
        if option.startswith("--") and option not in known:
            close = difflib.get_close_matches(option, sorted(known), 1)
            if close:
                return "; did you mean %r?" % close[0]
    return ""


def _subparser(parser, command):
    """The parser of one subcommand, or None."""
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and command in choices:
            return choices[command]
    return None


def _synopsis(parser, command):
    """'create NAME [--image IMAGE] ...' and the options' lines, from a subcommand's parser."""
    words, options = [command], []
    for action in parser._actions:
        if not action.option_strings:
            word = (action.metavar or action.dest).upper()
            words.append("[%s]" % word if action.nargs == "?" else
                         word + "..." if action.nargs == "+" else word)
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:
            value = ""
        elif action.choices:
            value = " {%s}" % ",".join(action.choices)
        else:
            value = " " + (action.metavar or action.dest.upper())
        options.append((flag + value, action.help or ""))
    return " ".join(words), options


class LineCommands:
    def __init__(self, manager, shell):
        self.manager = manager
        self.shell = shell  # the IPython shell the extension is loaded in
        self.parser = build_parser()

    def run(self, line):
        words = split_line(line)
        if not words:
            raise UsageError("a subcommand is needed: " + self.subcommands())
        if words[0] not in self.names():
            close = difflib.get_close_matches(words[0], self.names(), 1)
            raise UsageError("unknown subcommand %s: %suse one of %s (%%dockerrun help "
                             "explains each)" % (shown(words[0]), "did you mean %r? Or " % close[0]
                                                 if close else "", self.subcommands()))
        try:
            args = parse_words(self.parser, words)
        except UsageError as exc:
            raise UsageError("%s\n%s" % (exc, self.usage(words[0]))) from None
        return getattr(self, "cmd_" + args.command)(args)

    def usage(self, command):
        """The one-subcommand usage line, e.g. for an error about its arguments."""
        sub = _subparser(self.parser, command)
        if sub is None:
            return ""
        text = sub.format_usage().replace("::", "").replace("%%", "%")
        return "usage: " + " ".join(text.split())

    def names(self):
        return [n[4:] for n in dir(self) if n.startswith("cmd_")]

    def subcommands(self):
        return ", ".join(sorted(self.names()))

    # --- subcommands ---------------------------------------------------------
    def cmd_help(self, args):
        print(self.help_text())

    def help_text(self):
        """Every subcommand with its options and an example."""
        out = ["%%dockerrun [NAME...] [--timeout SECONDS] [--image IMAGE] [--reset] [--no-raise]",
               "    (first line of a cell) Run the cell in instance NAME, created on first "
               "use.",
               "    Several names, a pattern (student*) or a list ({students}) run it in each "
               "at once.",
               "    e.g. %%dockerrun alice --timeout 30", "",
               "%dockerrun SUBCOMMAND: manage this notebook's instances.", ""]
        for action in self.parser._actions:
            if not isinstance(getattr(action, "choices", None), dict):
                continue
            for choice in action._choices_actions:
                synopsis, options = _synopsis(action.choices[choice.dest], choice.dest)
                out.append("%dockerrun " + synopsis + (" [options]" if options else ""))
                out.extend(textwrap.wrap(choice.help.replace("%%", "%"), 88, initial_indent="    ",
                                         subsequent_indent="    "))
                for flag, text in options:
                    out.append("    %-22s %s" % (flag, text) if len(flag) <= 22
                               else "    %s\n    %-22s %s" % (flag, "", text))
                out.append("    e.g. " + EXAMPLES[choice.dest])
                out.append("")
        return "\n".join(out).rstrip()

    def cmd_list(self, args):
        rows = self.manager.statuses()
        pool = self.manager.pool
        footer = pool.describe() if (pool.size or pool.errors) else ""
        if not rows:
            print("no instances in this notebook" + ("\n" + footer if footer else ""))
            return
        text = text_table(rows) + "\n(* = the default instance)"
        if footer:
            text += "\n" + footer
        if getattr(self.shell, "kernel", None) is not None:
            # a notebook: an HTML table, with the text as the plain fallback
            extra = "<pre>%s</pre>" % html.escape(footer) if footer else ""
            publish_display_data({"text/html": html_table(rows) + extra, "text/plain": text})
        else:
            print(text)

    def cmd_create(self, args):
        c = self.manager.config
        names = [check_name(name) for name in args.name]  # every name checked before any is made
        twice = sorted(set(n for n in names if names.count(n) > 1))
        if twice:
            raise UsageError("create names each instance once: %s given twice" % ", ".join(twice))
        env = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError("--env takes KEY=VALUE, not %r" % item)
            env[key] = value
        spec = InstanceSpec.from_config(
            c, image=args.image, memory=args.memory, cpus=args.cpus, pids=args.pids,
            disk=args.disk, network=args.network, runtime=args.runtime, env=env).validate()
        try:
            if len(names) > 1:
                from ._multirun import create_many
                create_many(self.manager, names, spec, print, _print_error)
                return
            self.manager.create(names[0], spec, progress=print)
        except ImageNotFound as exc:
            raise UsageError("image %r is not installed in Docker here; build or pull it "
                             "first, or leave out --image to use the default %r"
                             % (exc.image, c.image)) from None
        print("created instance %r" % names[0])

    def cmd_delete(self, args):
        if args.all and args.name:
            raise UsageError("delete takes an instance name or --all, not both")
        if args.all:
            names = self.manager.delete_all()
            print("deleted %d instance(s)" % len(names))
            return
        if not args.name:
            raise UsageError("delete needs an instance name or --all")
        self.manager.delete(args.name)
        print("deleted instance %r" % args.name)

    def cmd_restart(self, args):
        self.manager.restart(args.name, progress=print)
        print("restarted instance %r: it starts from scratch, its variables and files are "
              "gone" % args.name)

    def cmd_reset(self, args):
        ended = self.manager.reset(args.name)
        print("reset instance %r: its variables are cleared, its files are kept%s"
              % (args.name, _whose(ended, "stopped")))

    def cmd_interrupt(self, args):
        stopped = self.manager.interrupt(args.name)
        if stopped is None:
            print("instance %r was not running a cell" % args.name)
        else:
            print("interrupted instance %r%s" % (args.name, _whose(stopped, "interrupted")))

    def cmd_use(self, args):
        self.manager.config.default_instance = check_name(args.name)
        print("default instance is now %r" % args.name)

    def cmd_cleanup(self, args):
        removed = self.manager.cleanup(all_scopes=args.all_notebooks)
        where = "" if args.all_notebooks else " of this notebook"
        if removed:
            print("removed %d stopped or leftover container(s)%s: %s"
                  % (len(removed), where, ", ".join(removed)))
        else:
            print("nothing to clean up%s" % where)

    def cmd_pool(self, args):
        pool = self.manager.pool
        if args.n is not None:
            if args.n < 0:
                raise UsageError("pool takes a number of instances, 0 or more (0 empties it)")
            if args.n > MAX_POOL_SIZE:
                raise UsageError("pool takes at most %d instances, not %d"
                                 % (MAX_POOL_SIZE, args.n))
            # Through the config, so %config DockerRun.pool_size shows the same number.
            self.manager.config.pool_size = args.n
            pool.resize(args.n, wait=(args.n == 0))  # filling goes on in the background
            if args.n == 0:
                print("pool emptied")
                return
        print(pool.describe())

    def cmd_put(self, args):
        limit = _files.transfer_limit(self.manager.config)
        print(_files.put(self.manager, args.local, args.target, limit, force=args.force))

    def cmd_get(self, args):
        limit = _files.transfer_limit(self.manager.config)
        print(_files.get(self.manager, args.source, args.local, limit, force=args.force))

    def cmd_install(self, args):
        limit = _files.transfer_limit(self.manager.config)
        print(_install.install(self.manager, check_name(args.name), args.pip, limit,
                               progress=_say))

    def cmd_image(self, args):
        print(_package_image.build(self.manager, args.tag, args.pip, progress=_say))

    def cmd_panel(self, args):
        # Returned, not displayed: the cell shows it, and `p = %dockerrun panel` keeps it.
        # Imported here so that loading the extension does not import ipywidgets.
        from ._panel import panel_for
        return panel_for(self.manager, self.shell)


def _say(line):
    """A progress line beneath the cell, at once."""
    print(line, flush=True)


def _whose(cell, verb):
    """'; <verb> the cell of <owner> (running for N s)', from the agent's report
    (untrusted: anything but a dict says nothing)."""
    if not cell or not isinstance(cell, dict):
        return ""
    seconds = cell.get("seconds")
    since = (" (running for %d s)" % seconds) if isinstance(seconds, (int, float)) else ""
    return "; %s the cell of %s%s" % (verb, plain_text(cell.get("owner")) or "another kernel",
                                       since)


def _print_error(text):
    sys.stderr.write("\x1b[0;31m%s\x1b[0m\n" % text)
    sys.stderr.flush()
