"""Image I/O on a Docker engine (placeholder: the image helper provides the real module).

``DockerImages(api)`` takes docker-py's low-level ``APIClient``.
"""

import docker.errors
from docker.utils import parse_repository_tag


class DockerImages:
    """Images on one Docker engine: look up, pull, build, import."""

    def __init__(self, api):
        self.api = api

    def exists(self, tag):
        """True if the engine has an image called tag (no registry lookup)."""
        try:
            self.api.inspect_image(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def inspect(self, ref):
        return self.api.inspect_image(ref)

    def pull(self, ref, progress):
        repo, tag = parse_repository_tag(ref)
        for event in self.api.pull(repo, tag=tag, stream=True, decode=True):
            progress(event)

    def build(self, context_dir, tag, progress):
        for event in self.api.build(path=str(context_dir), tag=tag, rm=True, decode=True):
            progress(event)

    def import_tar(self, path, tag):
        repo, img_tag = parse_repository_tag(tag)
        return self.api.import_image(src=str(path), repository=repo, tag=img_tag)
