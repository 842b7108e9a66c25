"""The ``%dockerrun SUBCOMMAND`` line magic: parsing and dispatch.

Each subcommand is a method ``cmd_<name>`` taking the parsed arguments; the
instance layer does the work. Parsing uses IPython's MagicArgumentParser, so
a bad subcommand or value is a short ``UsageError``.
"""

import shlex

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

from ._spec import InstanceSpec


def build_parser():
    parser = MagicArgumentParser(prog="%dockerrun", add_help=False,
                                 description="Manage FiddleDock instances.")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.add_parser("help", help="Show this help.", add_help=False)
    sub.add_parser("list", help="Show the instances of this notebook.", add_help=False)
    create = sub.add_parser("create", help="Create an instance.", add_help=False)
    create.add_argument("name")
    create.add_argument("--image")
    create.add_argument("--memory", help="Memory limit, e.g. 512m (no extra swap).")
    create.add_argument("--cpus", type=float, help="CPU limit in cores, e.g. 1 or 0.5.")
    create.add_argument("--pids", type=int, help="Process limit.")
    create.add_argument("--disk", help="Size of each writable tmpfs, e.g. 256m.")
    create.add_argument("--network", choices=["none", "bridge"])
    create.add_argument("--runtime", choices=["runc", "runsc"])
    create.add_argument("--env", action="append", default=[], metavar="K=V")
    delete = sub.add_parser("delete", help="Delete an instance (or --all).", add_help=False)
    delete.add_argument("name", nargs="?")
    delete.add_argument("--all", action="store_true")
    for cmd, text in (("restart", "New container, same settings; state is lost."),
                      ("reset", "Fresh namespace in the same container."),
                      ("use", "Make NAME the default for a bare %%dockerrun.")):
        p = sub.add_parser(cmd, help=text, add_help=False)
        p.add_argument("name")
    sub.add_parser("cleanup", help="Remove stopped and orphaned instances.", add_help=False)
    return parser


class LineCommands:
    def __init__(self, manager):
        self.manager = manager
        self.parser = build_parser()

    def run(self, line):
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError("cannot parse %r: %s" % (line, exc))
        if not words:
            raise UsageError("a subcommand is needed: " + self.subcommands())
        if words[0] not in self.names():
            raise UsageError("unknown subcommand %r; use one of: %s"
                             % (words[0], self.subcommands()))
        args = self.parser.parse_argstring(" ".join(shlex.quote(w) for w in words))
        return getattr(self, "cmd_" + args.command)(args)

    def names(self):
        return [n[4:] for n in dir(self) if n.startswith("cmd_")]

    def subcommands(self):
        return ", ".join(sorted(self.names()))

    # --- subcommands ---------------------------------------------------------
    def cmd_help(self, args):
        print(self.parser.format_help())

    def cmd_list(self, args):
        rows = self.manager.list()
        if not rows:
            print("no instances")
            return
        for row in rows:
            labels = row.get("Labels") or {}
            print("%-20s %-28s %s" % (labels.get("fiddledock.instance"),
                                      labels.get("fiddledock.image"), row.get("Status")))

    def cmd_create(self, args):
        c = self.manager.config
        env = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError("--env takes KEY=VALUE, not %r" % item)
            env[key] = value
        spec = InstanceSpec(
            image=args.image or c.image,
            memory=args.memory or c.memory,
            cpus=c.cpus if args.cpus is None else args.cpus,
            pids=c.pids if args.pids is None else args.pids,
            disk=args.disk or c.disk,
            network=args.network or c.network,
            runtime=args.runtime or c.runtime,
            env={**c.env, **env},
        )
        self.manager.create(args.name, spec, progress=print)
        print("created instance %r" % args.name)

    def cmd_delete(self, args):
        if args.all:
            names = self.manager.delete_all()
            print("deleted %d instance(s)" % len(names))
            return
        if not args.name:
            raise UsageError("delete needs an instance name or --all")
        self.manager.delete(args.name)
        print("deleted instance %r" % args.name)

    def cmd_restart(self, args):
        self.manager.restart(args.name)
        print("restarted instance %r (new container, state lost)" % args.name)

    def cmd_reset(self, args):
        self.manager.reset(args.name)
        print("reset instance %r (fresh namespace)" % args.name)

    def cmd_use(self, args):
        from ._spec import check_name
        self.manager.config.default_instance = check_name(args.name)
        print("default instance is now %r" % args.name)

    def cmd_cleanup(self, args):
        removed = 0
        for row in self.manager.engine.list():
            if row.get("State") != "running":
                self.manager.engine.remove(row["Id"])
                removed += 1
        print("removed %d stopped instance(s)" % removed)
