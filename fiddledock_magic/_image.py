"""Build FiddleDock's default sandbox image.

One Dockerfile (``image/Dockerfile``) serves two routes, chosen here:

* registry route: ``python:3.12-slim`` is present or can be pulled; the
  Dockerfile pip-installs numpy and matplotlib on top of it;
* offline route: no registry answers, so a Python base is bootstrapped from
  Debian's packages (debootstrap, then numpy and matplotlib as Debian
  packages), imported as ``fiddledock-base:bookworm`` and used as ``BASE``.

``FIDDLEDOCK_BASE_IMAGE`` overrides the choice. Standard library and the docker
SDK only: the magic calls this on the first ``%%dockerrun`` when the default
image is missing, and ``python -m fiddledock_magic build-image`` does it up front.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Iterable, Optional

import docker
import docker.errors
from docker.utils import parse_repository_tag

DEFAULT_IMAGE = "fiddledock-sandbox:1"
BASE_IMAGE_OFFLINE = "fiddledock-base:bookworm"
BASE_IMAGE_REGISTRY = "python:3.12-slim"

# Offline route: what debootstrap puts into the base image.
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_BOOTSTRAP_PACKAGES = ("python3",)
# python3-munkres satisfies python3-fonttools' "python3-scipy | python3-munkres"
# cheaply; apt would otherwise pick scipy and with it a C/C++ toolchain.
DEBIAN_EXTRA_PACKAGES = ("python3-numpy", "python3-matplotlib", "python3-munkres")

# An offline engine may answer a pull at once ("no such host") or only after a
# TCP connect timeout; the SDK's pull has no timeout of its own, so we bound
# the wait for the first pull event, then the silence between events.
PULL_FIRST_EVENT_TIMEOUT = 20.0
PULL_IDLE_TIMEOUT = 180.0
# The SDK's build() has no HTTP timeout by default: a wedged engine would hang
# the cell forever. A RUN step may stay silent for a while (pip building
# wheels), so this is generous.
BUILD_IDLE_TIMEOUT = 1800

Progress = Callable[[str], None]

# Serialises builds within one process (two cells racing on a first run).
_BUILD_LOCK = threading.Lock()


from ._errors import ImageBuildError  # noqa: E402  (the package's one root)


def _noop(line: str) -> None:
    pass


def image_exists(client, tag: str) -> bool:
    """True if the engine has an image called *tag* (no registry lookup)."""
    try:
        client.api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def context_dir() -> pathlib.Path:
    """The folder holding the sandbox Dockerfile.

    A wheel ships it as ``fiddledock_magic/_image_context/``; a source checkout
    or editable install has it at ``<repo>/image/``.
    """
    here = pathlib.Path(__file__).resolve().parent
    candidates = (here / "_image_context", here.parent / "image")
    for candidate in candidates:
        if (candidate / "Dockerfile").is_file():
            return candidate
    raise ImageBuildError(
        "the sandbox Dockerfile was not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall fiddledock_magic"
    )


def build_default_image(client, tag: str = DEFAULT_IMAGE, progress: Progress = _noop) -> None:
    """Build the default sandbox image as *tag*, streaming output lines to *progress*.

    Always builds (the caller checks :func:`image_exists` first); raises
    :class:`ImageBuildError` with a readable message on any failure.
    """
    with _BUILD_LOCK:
        try:
            _build(client, tag, progress)
        except ImageBuildError:
            raise
        # Engine errors, and OSError for requests' timeouts from a wedged engine.
        except (docker.errors.DockerException, OSError) as exc:
            raise ImageBuildError(f"building {tag} failed: {exc}") from exc


def _build(client, tag: str, progress: Progress) -> None:
    base, offline = _choose_base(client, progress)
    ctx = context_dir()
    progress(f"building {tag} from {base} ({ctx})")
    stream = client.api.build(
        path=str(ctx),
        tag=tag,
        buildargs={"BASE": base},
        # Standard OCI key, and not "fiddledock.*": containers inherit image
        # labels, and that prefix is for the instances' own labels.
        labels={"org.opencontainers.image.base.name": base},
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
        # The offline route installs nothing during the build, so it needs
        # no network at all; other routes may pip install.
        network_mode="none" if offline else None,
        timeout=BUILD_IDLE_TIMEOUT,
    )
    _follow_build(stream, progress)
    if not image_exists(client, tag):
        raise ImageBuildError(f"docker build finished but {tag} does not exist")
    progress(f"built {tag}")


# -- choosing the base ---------------------------------------------------------

def _choose_base(client, progress: Progress) -> tuple[str, bool]:
    """Return (base image, is_offline_route)."""
    override = os.environ.get("FIDDLEDOCK_BASE_IMAGE", "").strip()
    if override:
        progress(f"base image from FIDDLEDOCK_BASE_IMAGE: {override}")
        return override, False
    if image_exists(client, BASE_IMAGE_REGISTRY):
        return BASE_IMAGE_REGISTRY, False
    progress(f"trying to pull {BASE_IMAGE_REGISTRY} ...")
    if _try_pull(client, BASE_IMAGE_REGISTRY, progress):
        return BASE_IMAGE_REGISTRY, False
    if image_exists(client, BASE_IMAGE_OFFLINE):
        progress(f"no registry; using the offline base {BASE_IMAGE_OFFLINE}")
    else:
        progress(f"no registry; building the offline base {BASE_IMAGE_OFFLINE} from Debian packages")
        build_offline_base(client, progress=progress)
    return BASE_IMAGE_OFFLINE, True


def _try_pull(client, ref: str, progress: Progress,
              first_timeout: float = PULL_FIRST_EVENT_TIMEOUT,
              idle_timeout: float = PULL_IDLE_TIMEOUT) -> bool:
    """Pull *ref*; False (never an exception) if the registry is unusable.

    The pull runs in a daemon thread so that an engine stuck connecting to an
    unreachable registry cannot hang us; on timeout the thread is abandoned.
    """
    repo, tag = parse_repository_tag(ref)
    events: queue.Queue = queue.Queue()

    def worker() -> None:
        try:
            for event in client.api.pull(repo, tag=tag, stream=True, decode=True):
                events.put(("event", event))
            events.put(("done", None))
        except Exception as exc:  # reported to the waiting thread
            events.put(("error", exc))

    threading.Thread(target=worker, name="fiddledock-pull", daemon=True).start()
    timeout = first_timeout
    while True:
        try:
            kind, value = events.get(timeout=timeout)
        except queue.Empty:
            progress(f"pull of {ref}: no answer for {timeout:.0f} s, giving up on the registry")
            return False
        if kind == "error":
            progress(f"pull of {ref} failed: {_short_error(value)}")
            return False
        if kind == "done":
            return image_exists(client, ref)
        if value.get("error"):
            progress(f"pull of {ref} failed: {value['error']}")
            return False
        status = value.get("status", "")
        # Per-chunk "Downloading"/"Extracting" events would flood the cell.
        if status and status not in ("Downloading", "Extracting", "Waiting"):
            layer = value.get("id")
            progress(f"{layer}: {status}" if layer else status)
        timeout = idle_timeout


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc)


# -- the offline base --------------------------------------------------------------

def build_offline_base(client, tag: str = BASE_IMAGE_OFFLINE, progress: Progress = _noop) -> None:
    """Bootstrap Debian with Python, numpy and matplotlib and import it as *tag*.

    Needs Linux, root and debootstrap (installed through apt when missing). The
    import goes through the docker API, so a remote DOCKER_HOST works too.
    """
    _ensure_debootstrap(progress)
    mirror = os.environ.get("FIDDLEDOCK_DEBIAN_MIRROR", "").strip() or DEBIAN_MIRROR
    env = _clean_env()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="fiddledock-rootfs-", dir=_scratch_dir()))
    rootfs = workdir / "rootfs"
    tarball = workdir / "rootfs.tar"
    started = time.monotonic()
    try:
        _run_streaming(
            ["debootstrap", "--variant=minbase", "--include=" + ",".join(DEBIAN_BOOTSTRAP_PACKAGES),
             DEBIAN_SUITE, str(rootfs), mirror],
            progress, what="debootstrap", env=env,
        )
        progress(f"debootstrap done in {time.monotonic() - started:.0f} s; "
                 f"installing {' '.join(DEBIAN_EXTRA_PACKAGES)}")
        _apt_install_in_rootfs(rootfs, DEBIAN_EXTRA_PACKAGES, progress, env)
        _trim_rootfs(rootfs)
        progress(f"root filesystem ready in {time.monotonic() - started:.0f} s; packing it")
        # A file rather than a pipe: the SDK then sends it with a length and
        # without an HTTP timeout, which suits a remote engine.
        _run_streaming(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."],
                       progress, what="tar", env=env)
        progress(f"importing {tarball.stat().st_size // 2**20} MB as {tag}")
        repo, img_tag = parse_repository_tag(tag)
        result = client.api.import_image(
            src=str(tarball), repository=repo, tag=img_tag,
            # An imported image has no config at all; give it what a Python
            # base image normally carries.
            changes=[
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["python3"]',
            ],
        )
        _check_import_result(result, tag)
        if not image_exists(client, tag):
            raise ImageBuildError(f"docker import finished but {tag} does not exist")
        progress(f"imported {tag} in {time.monotonic() - started:.0f} s")
    finally:
        _remove_tree(workdir, progress)


def _scratch_dir() -> Optional[str]:
    """Where the root filesystem is assembled (about 1 GB at its peak).

    /var/tmp rather than /tmp: /tmp is often a nodev tmpfs, and the device
    nodes debootstrap creates would not work there.
    """
    chosen = os.environ.get("FIDDLEDOCK_TMPDIR", "").strip()
    if chosen:
        return chosen
    if os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK):
        return "/var/tmp"
    return None


def _clean_env() -> dict:
    """Environment for debootstrap and the chroot: no host PYTHONPATH and the like
    leaking into maintainer scripts, but proxies kept (they reach the mirror)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    for key, value in os.environ.items():
        if key.lower() in ("http_proxy", "https_proxy", "no_proxy", "ftp_proxy"):
            env[key] = value
    return env


def _apt_install_in_rootfs(rootfs: pathlib.Path, packages, progress: Progress, env: dict) -> None:
    """apt-get install inside the bootstrapped tree.

    Not debootstrap --include: its resolver always takes a dependency's first
    alternative and ignores preferences, so python3-fonttools' "python3-scipy |
    python3-munkres" drags in scipy, pythran, gcc, g++, the Python headers and
    openblas (an image of 1.1 GB instead of about 0.5 GB).
    """
    policy = rootfs / "usr/sbin/policy-rc.d"
    # Keep maintainer scripts from trying to start services in the chroot.
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        chroot = ["chroot", str(rootfs)]
        _run_streaming(chroot + ["apt-get", "update"], progress, what="apt-get update (chroot)", env=env)
        _run_streaming(
            chroot + ["apt-get", "install", "-y", "--no-install-recommends",
                      "-o", "APT::Keep-Downloaded-Packages=false", *packages],
            progress, what="apt-get install (chroot)", env=env,
        )
    finally:
        policy.unlink(missing_ok=True)


def _ensure_debootstrap(progress: Progress) -> None:
    if not sys.platform.startswith("linux"):
        raise ImageBuildError(
            "no image registry is reachable and the offline base can only be built on "
            f"Linux; pull {BASE_IMAGE_REGISTRY} on a connected machine, or set "
            "FIDDLEDOCK_BASE_IMAGE to a local image that has python3"
        )
    if os.geteuid() != 0:
        raise ImageBuildError(
            "no image registry is reachable, and building the offline base image "
            f"{BASE_IMAGE_OFFLINE} needs root (debootstrap): run "
            "`sudo python -m fiddledock_magic build-image` once, or make "
            f"{BASE_IMAGE_REGISTRY} available, or set FIDDLEDOCK_BASE_IMAGE to a "
            "local image that has python3"
        )
    if shutil.which("debootstrap"):
        return
    if not shutil.which("apt-get"):
        raise ImageBuildError(
            "debootstrap is missing and there is no apt-get to install it; install "
            "debootstrap, or set FIDDLEDOCK_BASE_IMAGE to a local image that has python3"
        )
    progress("installing debootstrap with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"]
    try:
        _run_streaming(install, progress, what="apt-get install", env=env)
    except ImageBuildError:
        # Usually just empty or stale package lists on a fresh machine.
        _run_streaming(["apt-get", "update"], progress, what="apt-get update", env=env)
        _run_streaming(install, progress, what="apt-get install", env=env)
    if not shutil.which("debootstrap"):
        raise ImageBuildError("apt-get installed debootstrap but it is not on PATH")


def _run_streaming(cmd: list, progress: Progress, what: str, env: Optional[dict] = None) -> None:
    """Run *cmd*, passing each output line to *progress*; ImageBuildError if it fails."""
    tail: list = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    except OSError as exc:
        raise ImageBuildError(f"{what} could not start: {exc}") from exc
    assert proc.stdout is not None
    with proc.stdout:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail = (tail + [line])[-15:]
            progress(line)
    code = proc.wait()
    if code != 0:
        detail = "\n".join(tail)
        raise ImageBuildError(f"{what} failed with exit code {code}:\n{detail}")


def _trim_rootfs(rootfs: pathlib.Path) -> None:
    """Drop what a sandbox never needs: package caches and lists, docs, logs.

    Directories stay (apt expects them); licence files stay.
    """
    def delete_files(rel: str, keep=lambda p: False) -> None:
        top = rootfs / rel
        if not top.is_dir() or top.is_symlink():
            return
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                path = pathlib.Path(dirpath, name)
                if not keep(path):
                    try:
                        path.unlink()
                    except OSError:
                        pass

    delete_files("var/lib/apt/lists")
    delete_files("var/cache/apt")
    delete_files("var/cache/debconf", keep=lambda p: not p.name.endswith("-old"))
    delete_files("var/log")
    delete_files("usr/share/doc", keep=lambda p: p.name == "copyright")
    for rel in ("usr/share/man", "usr/share/info", "usr/share/locale"):
        top = rootfs / rel
        if top.is_dir() and not top.is_symlink():
            for child in top.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
    # debootstrap copies the host's resolver and name; Docker supplies its own.
    for rel in ("etc/resolv.conf", "etc/hostname"):
        path = rootfs / rel
        if path.is_file() and not path.is_symlink():
            path.write_text("")


def _mounts_under(path: pathlib.Path) -> list:
    """Mount points at or below *path* (debootstrap leaves /proc etc. if killed)."""
    prefix = str(path.resolve())
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4:
                    point = fields[4].replace("\\040", " ")
                    if point == prefix or point.startswith(prefix + "/"):
                        found.append(point)
    except OSError:
        pass
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: pathlib.Path, progress: Progress) -> None:
    # Never rmtree through a mount that points back into the host.
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    left = _mounts_under(path)
    if left:
        progress(f"warning: leaving {path} in place, still mounted: {', '.join(left)}")
        return
    shutil.rmtree(path, ignore_errors=True)


def _check_import_result(result, tag: str) -> None:
    text = result if isinstance(result, str) else json.dumps(result)
    for line in text.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("error"):
            raise ImageBuildError(f"docker import of {tag} failed: {message['error']}")


# -- build output ------------------------------------------------------------------

def _follow_build(stream: Iterable[dict], progress: Progress) -> None:
    """Pass build output to *progress* line by line; raise on a build error."""
    pending = ""
    for chunk in stream:
        if "error" in chunk:
            if pending:
                progress(pending)
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            raise ImageBuildError(f"docker build failed: {detail.strip()}")
        text = chunk.get("stream")
        if text is None and chunk.get("status"):
            text = chunk["status"] + "\n"
        if not text:
            continue
        pending += text
        *lines, pending = pending.split("\n")
        for line in lines:
            if line.strip():
                progress(line.rstrip("\r"))
    if pending.strip():
        progress(pending)


# -- CLI -----------------------------------------------------------------------------

def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fiddledock_magic build-image",
        description="Build FiddleDock's default sandbox image if it is missing.",
    )
    parser.add_argument("--tag", default=DEFAULT_IMAGE, help=f"image tag (default {DEFAULT_IMAGE})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        say(f"fiddledock: no Docker engine reachable ({exc}); run scripts/ensure-engine.sh "
            "or set DOCKER_HOST")
        return 1
    try:
        if not args.force and image_exists(client, args.tag):
            say(f"fiddledock: {args.tag} already exists")
            return 0
        started = time.monotonic()
        build_default_image(client, tag=args.tag, progress=say)
        size = client.api.inspect_image(args.tag).get("Size", 0)
        say(f"fiddledock: {args.tag} ready ({size / 1e6:.0f} MB) "
            f"in {time.monotonic() - started:.0f} s")
        return 0
    except (ImageBuildError, docker.errors.DockerException) as exc:
        say(f"fiddledock: building {args.tag} failed: {exc}")
        return 1
    finally:
        client.close()

