"""``%dockerrun image build TAG PKG... [pip options]``: an image for a class, with packages.

The image is built FROM the notebook's image (``DockerRun.image``, the
default one unless changed) with the wheels ``%dockerrun install`` would
use, installed for every user of the image, with no network during the
build. Its inputs (the base image's id, the wheels' contents, what pip is
asked for, the Dockerfile) are hashed into a label: building the same again
is a cache hit, and says so. Every instance created with ``--image TAG``
then has the packages at once, outside its disk limit.

Which Python the base has is asked once per base image id, from a
short-lived hardened container of it (the wheel installer's probe).
"""

import hashlib
import os
import shutil
import tempfile
import uuid

from . import _image, _install
from ._errors import ImageBuildError, ImageNotFound
from ._spec import POOL_HOSTNAME

# Not "fiddledock.*": containers inherit image labels, and that prefix is for
# the instances' own.
INPUTS_LABEL = "org.fiddledock.packages.inputs"
PROBE_PREFIX = "fiddledock_probe-"
PROBE_COMMAND = ["python3", "-c", "import time; time.sleep(300)"]
DOCKERFILE = """\
ARG BASE
FROM ${BASE}
USER 0:0
COPY wheels /tmp/fiddledock-wheels
RUN PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \\
    PIP_NO_INPUT=1 python3 -m pip install --no-index --no-cache-dir \\
    --find-links /tmp/fiddledock-wheels -r /tmp/fiddledock-wheels/requirements.txt \\
    && rm -rf /tmp/fiddledock-wheels
USER %s
"""

_TARGETS = {}  # base image id -> its _wheelhouse.Target (what is installed in it never changes)


def base_target(manager, base, image_id):
    """The base image's Python and platform, from a container that lives for the probe."""
    if image_id in _TARGETS:
        return _TARGETS[image_id]
    backend = manager.backend
    spec = manager.default_spec(base).validate()
    cname = "%s%s" % (PROBE_PREFIX, uuid.uuid4().hex[:12])
    cid = backend.create(cname, spec, PROBE_COMMAND, {}, POOL_HOSTNAME)
    try:
        backend.start(cid)
        _TARGETS[image_id] = _install.probe(backend, backend.inspect(cid), base)
    finally:
        backend.remove(cid)
    return _TARGETS[image_id]


def inputs_hash(image_id, pins, wheels, dockerfile):
    digest = hashlib.sha256()
    for part in [image_id, dockerfile] + list(pins):
        digest.update(part.encode("utf-8") + b"\0")
    for path in wheels:
        digest.update(os.path.basename(path).encode("utf-8") + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def build(manager, tag, words, progress=print):
    """Build tag FROM the notebook's image with the packages words name; a one-line summary."""
    images = manager.backend.images
    base = manager.config.image
    if not images.exists(base):
        if base != _image.DEFAULT_IMAGE:
            raise ImageNotFound(base)
        _image.build_default_image(images, base, progress=progress)
    inspected = images.inspect(base) or {}
    image_id = inspected.get("Id") or base
    target = base_target(manager, base, image_id)
    wheels, pins = _install.resolve(words, target, progress)
    user = (inspected.get("Config") or {}).get("User") or "0:0"
    dockerfile = DOCKERFILE % user
    key = inputs_hash(image_id, pins, wheels, dockerfile)
    existing = images.inspect(tag)
    if existing and ((existing.get("Config") or {}).get("Labels") or {}).get(INPUTS_LABEL) == key:
        return ("%s is up to date (cache hit: same base image, wheels and packages); "
                "use it with %%dockerrun create NAME --image %s" % (tag, tag))
    with tempfile.TemporaryDirectory(prefix="fiddledock-image-") as ctx:
        folder = os.path.join(ctx, "wheels")
        os.mkdir(folder)
        for path in wheels:
            shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))
        with open(os.path.join(folder, "requirements.txt"), "w", encoding="utf-8") as fh:
            fh.write("\n".join(pins) + "\n")
        with open(os.path.join(ctx, "Dockerfile"), "w", encoding="utf-8") as fh:
            fh.write(dockerfile)
        progress("building %s from %s with %s (no network)" % (tag, base, " ".join(pins)))
        images.build(ctx, tag, progress, buildargs={"BASE": base},
                     labels={INPUTS_LABEL: key, _image.BASE_LABEL: base}, network=False)
    if not images.exists(tag):
        raise ImageBuildError("docker build finished but %s does not exist" % tag)
    return "built %s (%s); use it with %%dockerrun create NAME --image %s" % (
        tag, " ".join(pins), tag)
