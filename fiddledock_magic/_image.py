"""Build FiddleDock's default sandbox image.

One Dockerfile (``image/Dockerfile``) serves two routes, chosen here:

* registry route: ``python:3.12-slim`` is present or can be pulled; the
  Dockerfile pip-installs numpy, matplotlib and pandas on top of it;
* offline route: no registry answers, so a Python base is bootstrapped from
  Debian's packages (``_rootfs``), imported as ``fiddledock-base:bookworm``
  and used as ``BASE``.

``FIDDLEDOCK_BASE_IMAGE`` overrides the choice. The engine is reached through
an ``images`` object (``_docker_images.DockerImages`` for Docker): the magic
calls this on the first ``%%dockerrun`` when the default image is missing,
and ``python -m fiddledock_magic build-image`` does it up front.
"""

import os
import pathlib
import threading
import time

from . import _rootfs
from ._errors import FiddleDockError, ImageBuildError, format_size, short_error

DEFAULT_IMAGE = "fiddledock-sandbox:2"
# The offline base is named after its package list (_rootfs.EXTRA_PACKAGES):
# a base of an older list must not be taken for it.
BASE_IMAGE_OFFLINE = "fiddledock-base:bookworm-2"
BASE_IMAGE_REGISTRY = "python:3.12-slim"
# An imported image has no config at all; it gets what a Python base image carries.
OFFLINE_BASE_CONFIG = (
    "ENV PATH=%s" % _rootfs.SYSTEM_PATH,
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
# Standard OCI key, not "fiddledock.*": containers inherit image labels, and
# that prefix is for the instances' own labels.
BASE_LABEL = "org.opencontainers.image.base.name"

# Serialises builds within one process (two cells racing on a first run).
_BUILD_LOCK = threading.Lock()


def _noop(line):
    pass


def context_dir():
    """The folder holding the sandbox Dockerfile.

    A wheel ships it as ``fiddledock_magic/_image_context/``; a source checkout
    or editable install has it at ``<repo>/image/``.
    """
    here = pathlib.Path(__file__).resolve().parent
    candidates = (here / "_image_context", here.parent / "image")
    for candidate in candidates:
        if (candidate / "Dockerfile").is_file():
            return candidate
    raise ImageBuildError("the sandbox Dockerfile was not found (looked in %s); reinstall "
                          "fiddledock_magic" % ", ".join(str(c) for c in candidates))


def build_default_image(images, tag=DEFAULT_IMAGE, progress=_noop):
    """Build the default sandbox image as tag, streaming output lines to progress.

    Always builds (the caller checks ``images.exists`` first); raises
    ImageBuildError with a readable message on any failure.
    """
    with _BUILD_LOCK:
        try:
            base, offline = _choose_base(images, progress)
            build_sandbox_image(images, tag, base, network=not offline, progress=progress)
        except ImageBuildError:
            raise
        except FiddleDockError as exc:  # the engine refused or fell silent
            raise ImageBuildError("building %s failed: %s" % (tag, short_error(exc))) from None


def build_sandbox_image(images, tag, base, network=True, progress=_noop):
    """Build the Dockerfile on top of base as tag.

    ``network=False`` for a base that already has numpy, matplotlib and pandas: the
    build then installs nothing and needs no network.
    """
    ctx = context_dir()
    progress("building %s from %s (%s)" % (tag, base, ctx))
    images.build(ctx, tag, progress, buildargs={"BASE": base}, labels={BASE_LABEL: base},
                 network=network)
    if not images.exists(tag):
        raise ImageBuildError("docker build finished but %s does not exist" % tag)
    progress("built %s" % tag)


def _choose_base(images, progress):
    """``(base image, is_offline_route)``."""
    override = os.environ.get("FIDDLEDOCK_BASE_IMAGE", "").strip()
    if override:
        progress("base image from FIDDLEDOCK_BASE_IMAGE: %s" % override)
        return override, False
    if images.exists(BASE_IMAGE_REGISTRY):
        return BASE_IMAGE_REGISTRY, False
    progress("trying to pull %s ..." % BASE_IMAGE_REGISTRY)
    if _try_pull(images, BASE_IMAGE_REGISTRY, progress):
        return BASE_IMAGE_REGISTRY, False
    if images.exists(BASE_IMAGE_OFFLINE):
        progress("no registry; using the offline base %s" % BASE_IMAGE_OFFLINE)
    else:
        progress("no registry; building the offline base %s from Debian packages"
                 % BASE_IMAGE_OFFLINE)
        build_offline_base(images, progress=progress)
    return BASE_IMAGE_OFFLINE, True


def _try_pull(images, ref, progress):
    """Pull ref; False (never an exception) if the registry cannot deliver it."""
    try:
        images.pull(ref, progress)
    except FiddleDockError as exc:
        progress("pull of %s failed: %s" % (ref, short_error(exc)))
        return False
    return images.exists(ref)


def build_offline_base(images, tag=BASE_IMAGE_OFFLINE, progress=_noop):
    """Bootstrap Debian with Python, numpy, matplotlib, pandas and pip and import it as tag.

    The tarball goes through the engine's API, so a remote engine works too.
    """
    started = time.monotonic()
    try:
        _rootfs.ensure_debootstrap(progress)
    except ImageBuildError as exc:
        raise ImageBuildError(
            "no image registry is reachable, and the offline base image %s cannot be built "
            "here; make %s available (pull it on a connected machine), set "
            "FIDDLEDOCK_BASE_IMAGE to a local image that has python3, or run `sudo python -m "
            "fiddledock_magic build-image` once on Linux. Why not here: %s"
            % (tag, BASE_IMAGE_REGISTRY, exc)) from None
    with _rootfs.debian_tarball(progress) as tarball:
        progress("importing %s as %s" % (format_size(tarball.stat().st_size), tag))
        images.import_tar(tarball, tag, changes=OFFLINE_BASE_CONFIG)
    if not images.exists(tag):
        raise ImageBuildError("docker import finished but %s does not exist" % tag)
    progress("imported %s in %.0f s" % (tag, time.monotonic() - started))
