"""Command line: ``python -m fiddledock_magic build-image [--tag T] [--force]``."""

import sys

from . import _image

COMMANDS = {"build-image": _image.main}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m fiddledock_magic {%s} [options]" % ",".join(COMMANDS),
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
