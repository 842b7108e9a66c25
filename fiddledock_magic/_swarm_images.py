"""How an instance's image reaches the Swarm node that runs it (``SwarmBackend``'s part).

An image named with a registry host (``registry.school:5000/img:tag``, any
name whose first part has a dot or a port, or is ``localhost``) is pulled by
the nodes themselves, pinned to the digest the registry gives its tag now, as
``docker service create`` does. Any other image is copied from the manager's
engine to a node that lacks it (``save`` there, ``load`` through that node's
engine, with progress lines), and a service refers to it by its id, so no
node ever asks a registry.
"""

import threading

import docker.errors
import requests.exceptions
from docker.auth import INDEX_NAME, resolve_repository_name
from docker.utils import parse_repository_tag

from ._docker_backend import CHANGE_TIMEOUT
from ._errors import EngineError, EngineUnavailable, FiddleDockError, ImageNotFound, \
    format_size, short_error
from ._swarm_spec import node_label, node_ready

CHUNK = 1 << 20  # bytes per read of an image being copied
PROGRESS_SHARE = 4  # progress lines per image copy (every quarter)


def registry_of(image):
    """The registry host an image's name names (``host:5000``), or None.

    Docker Hub's names (``python:3.12``, ``docker.io/...``) count as none:
    their images are copied from the manager like a local one.
    """
    repository = parse_repository_tag(image)[0]
    try:
        index = resolve_repository_name(repository)[0]
    except docker.errors.InvalidRepository:
        return None
    return None if index in (INDEX_NAME, "index." + INDEX_NAME) else index


def copied(stream, size, where, progress):
    """The chunks of an image's tar, with a progress line every quarter of ``size``."""
    done, step = 0, max(1, size // PROGRESS_SHARE)
    next_line = step
    for chunk in stream:
        done += len(chunk)
        if done >= next_line:
            progress("  %s of about %s copied to %s"
                     % (format_size(done), format_size(size), where))
            next_line = done + step
        yield chunk


class ClusterImages:
    """Images on a cluster's nodes, for ``SwarmBackend``: it provides ``manager``,
    ``_call``, ``_nodes``, ``_engine``, ``_lock`` and the shared ``_images_on``,
    ``_copies`` and ``_told``."""

    def image_exists(self, image):
        if registry_of(image) is None:
            return self.manager.image_exists(image)
        self._pinned(image)  # the registry has it, or a clear error why not
        return True

    @property
    def images(self):
        return self.manager.images

    def _pinned(self, image):
        """A registry image's name pinned to the digest its registry gives it now."""
        repository, tag = parse_repository_tag(image)
        if tag and tag.startswith("sha256:"):
            return image
        try:
            found = self._call("inspect_distribution", image, within=CHANGE_TIMEOUT)
        except FiddleDockError as exc:  # not ImageNotFound: that would say "install it here"
            raise EngineError(404, "the registry %s does not give the image %s to the Swarm "
                              "manager (%s); push it there (docker push %s), or name an image "
                              "without a registry host to have FiddleDock copy it to the "
                              "nodes" % (registry_of(image), image, short_error(exc)[:200],
                                         image)) from None
        return "%s@%s" % (repository, found["Descriptor"]["digest"])

    def _image_id(self, image):
        """What a service runs: a registry image by digest, any other by its id here."""
        if registry_of(image) is not None:
            return self._pinned(image)
        info = self.manager.images.inspect(image)
        if info is None:
            raise ImageNotFound(image)
        return info["Id"]

    def prepare_image(self, image, progress):
        """Copy the image from the manager's engine to every ready node that lacks it
        (a registry's image: nothing, the nodes pull it)."""
        self._told.progress = progress
        if registry_of(image) is not None:
            return
        image_id = self._image_id(image)
        for node in self._nodes():
            if node_ready(node) and (node["ID"], image_id) not in self._images_on:
                self._ensure_image_on(node, image, image_id, progress)

    def _ensure_image_on(self, node, image, image_id, progress):
        engine = self._engine(node)
        with self._lock:
            copying = self._copies.setdefault((node["ID"], image_id), threading.Lock())
        with copying:
            if not engine.image_exists(image_id):
                self._copy_image(engine, node, image, progress)
        self._images_on.add((node["ID"], image_id))

    def _copy_image(self, engine, node, image, progress):
        """``save`` on the manager's engine into ``load`` on the node's (no registry)."""
        size = (self.manager.images.inspect(image) or {}).get("Size") or 0
        where = "node %s" % node_label(node)
        progress("%s lacks the image %s: copying it from the manager's engine (about %s)..."
                 % (where, image, format_size(size)))
        try:
            tar = self._call("get_image", image, chunk_size=CHUNK, within=CHANGE_TIMEOUT)
            answer = engine.call(engine.api.load_image, copied(tar, size, where, progress),
                                 within=None)
            for line in answer:
                if isinstance(line, dict) and line.get("error"):
                    raise EngineError(500, line["error"])
        except (requests.exceptions.RequestException, OSError) as exc:
            raise EngineUnavailable("copying the image %s to %s failed: %s"
                                    % (image, where, short_error(exc))) from None
        progress("%s: image %s copied" % (where, image))
