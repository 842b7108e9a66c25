"""Command line: ``python -m fiddledock_magic build-image [--tag T] [--force]``."""

import argparse
import sys
import time

from . import _image
from ._docker_backend import DockerBackend
from ._errors import FiddleDockError, format_size


def build_image(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fiddledock_magic build-image",
        description="Build FiddleDock's default sandbox image if it is missing.")
    parser.add_argument("--tag", default=_image.DEFAULT_IMAGE,
                        help="image tag (default %s)" % _image.DEFAULT_IMAGE)
    parser.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    args = parser.parse_args(argv)

    def say(line):
        print(line, flush=True)

    try:
        images = DockerBackend().images
        if not args.force and images.exists(args.tag):
            say("fiddledock: %s already exists" % args.tag)
            return 0
        started = time.monotonic()
        _image.build_default_image(images, tag=args.tag, progress=say)
        size = (images.inspect(args.tag) or {}).get("Size") or 0
        say("fiddledock: %s ready (%s) in %.0f s"
            % (args.tag, format_size(size), time.monotonic() - started))
        return 0
    except FiddleDockError as exc:  # the engine's or the build's own words, no traceback
        say("fiddledock: %s" % exc)
        return 1


COMMANDS = {"build-image": build_image}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m fiddledock_magic {%s} [options]" % ",".join(COMMANDS),
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
