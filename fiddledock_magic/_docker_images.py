"""Images on a Docker engine: look up, pull, build, import.

``DockerImages(api)`` takes docker-py's low-level ``APIClient``. What it
raises: ``EngineError`` (with the HTTP status) when the engine refuses,
``EngineUnavailable`` when it cannot be reached or falls silent,
``ImageNotFound`` when a pull finds nothing to pull, ``ImageBuildError``
when a build or an import itself fails. Progress goes
to a ``progress(line)`` callable as lines of text.
"""

import contextlib
import json
import queue
import threading

import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.utils import parse_repository_tag

from ._errors import EngineError, EngineUnavailable, ImageBuildError, ImageNotFound, short_error

# docker-py's pull has no timeout: an engine trying an unreachable registry
# may answer only after a TCP connect timeout. So the wait for the first
# event is bounded, then the silence between events.
PULL_FIRST_EVENT_TIMEOUT = 20.0
PULL_IDLE_TIMEOUT = 180.0
# A build's RUN step may stay silent for a while (pip building wheels).
BUILD_IDLE_TIMEOUT = 1800
# Per-chunk pull events would flood a cell.
QUIET_PULL_STATUSES = ("Downloading", "Extracting", "Waiting")

# Every way a request to the engine can fail, besides a refusal.
FAILURES = (docker.errors.DockerException, requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError, OSError)


@contextlib.contextmanager
def _engine_errors(doing):
    """docker-py's exceptions, as the package's own (the engine's words kept)."""
    try:
        yield
    except docker.errors.APIError as exc:
        raise EngineError(exc.status_code, exc.explanation or str(exc)) from None
    except FAILURES as exc:
        raise EngineUnavailable("the Docker engine failed while %s: %s"
                                % (doing, short_error(exc))) from None


class DockerImages:
    """The images of one Docker engine."""

    def __init__(self, api):
        self.api = api

    def exists(self, tag):
        """True if the engine has an image called tag (no registry lookup)."""
        return self.inspect(tag) is not None

    def inspect(self, ref):
        """The engine's inspect data of the image, or None if it has none by that name."""
        try:
            with _engine_errors("looking up %s" % ref):
                return self.api.inspect_image(ref)
        except EngineError as exc:
            if exc.status_code == 404:
                return None
            raise

    def pull(self, ref, progress, first_timeout=PULL_FIRST_EVENT_TIMEOUT,
             idle_timeout=PULL_IDLE_TIMEOUT):
        """Pull ref from its registry; raises if the registry cannot deliver it.

        The pull runs in a daemon thread, abandoned when the engine stays
        silent for too long, so an engine stuck connecting cannot hang us.
        """
        repo, tag = parse_repository_tag(ref)
        events = queue.Queue()

        def worker():
            try:
                with _engine_errors("pulling %s" % ref):
                    for event in self.api.pull(repo, tag=tag, stream=True, decode=True):
                        events.put(("event", event))
                events.put(("done", None))
            except Exception as exc:  # handed to the waiting thread
                events.put(("error", exc))

        threading.Thread(target=worker, name="fiddledock-pull", daemon=True).start()
        timeout = first_timeout
        while True:
            try:
                kind, value = events.get(timeout=timeout)
            except queue.Empty:
                raise EngineUnavailable("the Docker engine said nothing about the pull of "
                                        "%s for %.0f s" % (ref, timeout)) from None
            if kind == "error":
                raise value
            if kind == "done":
                return
            if value.get("error"):
                raise ImageNotFound(ref, "pulling %s failed: %s" % (ref, value["error"]))
            status = value.get("status", "")
            if status and status not in QUIET_PULL_STATUSES:
                layer = value.get("id")
                progress("%s: %s" % (layer, status) if layer else status)
            timeout = idle_timeout

    def build(self, context_dir, tag, progress, buildargs=None, labels=None, network=True):
        """Build the Dockerfile in context_dir as tag, output lines to progress.

        ``network=False``: the build's RUN steps get no network at all.
        """
        with _engine_errors("building %s" % tag):
            stream = self.api.build(
                path=str(context_dir), tag=tag, buildargs=buildargs or {}, labels=labels,
                rm=True, forcerm=True, pull=False, decode=True,
                network_mode=None if network else "none",
                # docker-py waits without limit by default: a wedged engine
                # would hang the cell forever.
                timeout=BUILD_IDLE_TIMEOUT,
            )
            follow_build(stream, progress)

    def import_tar(self, path, tag, changes=()):
        """Import the root filesystem tarball at path as tag.

        ``changes``: Dockerfile instructions (ENV, CMD...) for the image's
        config, which an imported image otherwise lacks entirely.
        """
        repo, img_tag = parse_repository_tag(tag)
        with _engine_errors("importing %s" % tag):
            # From a file the SDK sends it with a length and no HTTP timeout,
            # which suits a remote engine.
            result = self.api.import_image(src=str(path), repository=repo, tag=img_tag,
                                           changes=list(changes))
        text = result if isinstance(result, str) else json.dumps(result)
        for line in text.splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("error"):
                raise ImageBuildError("docker import of %s failed: %s" % (tag, message["error"]))


def follow_build(stream, progress):
    """Pass docker build output to progress line by line; ImageBuildError on a build error."""
    pending = ""
    for chunk in stream:
        if "error" in chunk:
            if pending:
                progress(pending)
            detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
            raise ImageBuildError("docker build failed: %s" % detail.strip())
        text = chunk.get("stream")
        if text is None and chunk.get("status"):
            text = chunk["status"] + "\n"
        if not text:
            continue
        lines = (pending + text).split("\n")
        pending = lines.pop()
        for line in lines:
            if line.strip():
                progress(line.rstrip("\r"))
    if pending.strip():
        progress(pending)
