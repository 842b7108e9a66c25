"""A Debian root filesystem with Python, numpy, matplotlib, pandas and pip, as a tarball.

The offline route to the default image: when no registry answers, Debian's
own packages (debootstrap, then apt-get in a chroot) give a Python base.
This module only makes the tarball; ``_image`` hands it to an engine to
import. Needs Linux, root and debootstrap (installed with apt-get when
missing).
"""

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from ._errors import ImageBuildError

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BOOTSTRAP_PACKAGES = ("python3",)
# python3-munkres satisfies python3-fonttools' "python3-scipy | python3-munkres"
# cheaply; apt would otherwise pick scipy and with it a C/C++ toolchain.
# python3-pip only installs from a wheelhouse copied in (%dockerrun install):
# instances have no network.
EXTRA_PACKAGES = ("python3-numpy", "python3-matplotlib", "python3-munkres", "python3-pandas",
                  "python3-pip")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "ftp_proxy")
OUTPUT_TAIL = 15  # lines of a failed command's output kept for its error

# Emptied (files only: apt expects the folders), with the files each keeps.
TRIMMED_FILES = (
    ("var/lib/apt/lists", lambda path: False),
    ("var/cache/apt", lambda path: False),
    ("var/cache/debconf", lambda path: not path.name.endswith("-old")),
    ("var/log", lambda path: False),
    ("usr/share/doc", lambda path: path.name == "copyright"),  # licences stay
)
TRIMMED_FOLDERS = ("usr/share/man", "usr/share/info", "usr/share/locale")
# debootstrap copies the host's resolver and name; the engine supplies its own.
EMPTIED = ("etc/resolv.conf", "etc/hostname")


@contextlib.contextmanager
def debian_tarball(progress, mirror=None):
    """Bootstrap the root filesystem and yield the path of its tarball.

    Everything is removed when the block ends. ``mirror``: a Debian mirror's
    URL (default ``FIDDLEDOCK_DEBIAN_MIRROR``, else deb.debian.org).
    """
    ensure_debootstrap(progress)
    mirror = mirror or os.environ.get("FIDDLEDOCK_DEBIAN_MIRROR", "").strip() or DEBIAN_MIRROR
    env = clean_env(os.environ)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="fiddledock-rootfs-", dir=scratch_dir()))
    rootfs = workdir / "rootfs"
    tarball = workdir / "rootfs.tar"
    started = time.monotonic()
    try:
        run_streaming(["debootstrap", "--variant=minbase",
                       "--include=" + ",".join(BOOTSTRAP_PACKAGES),
                       DEBIAN_SUITE, str(rootfs), mirror], progress, "debootstrap", env)
        progress("debootstrap done in %.0f s; installing %s"
                 % (time.monotonic() - started, " ".join(EXTRA_PACKAGES)))
        _apt_install(rootfs, EXTRA_PACKAGES, progress, env)
        trim(rootfs)
        progress("root filesystem ready in %.0f s; packing it" % (time.monotonic() - started))
        # A file rather than a pipe: an engine's import then gets it with a length.
        run_streaming(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."],
                      progress, "tar", env)
        yield tarball
    finally:
        remove_tree(workdir, progress)


def scratch_dir():
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


def clean_env(environ):
    """Environment for debootstrap and the chroot, from ``environ``.

    Nothing of the host's (PYTHONPATH and the like) reaches the maintainer
    scripts, but proxies stay: they may be the way to the mirror.
    """
    env = {"PATH": SYSTEM_PATH, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    for key, value in environ.items():
        if key.lower() in PROXY_VARIABLES:
            env[key] = value
    return env


def _apt_install(rootfs, packages, progress, env):
    """apt-get install inside the bootstrapped tree.

    Not debootstrap --include: its resolver always takes a dependency's first
    alternative and ignores preferences, so python3-fonttools' "python3-scipy |
    python3-munkres" drags in scipy, pythran, gcc, g++, the Python headers and
    openblas (an image of 1.1 GB instead of about 0.5 GB).
    """
    policy = rootfs / "usr/sbin/policy-rc.d"
    # Keeps maintainer scripts from starting services in the chroot.
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        chroot = ["chroot", str(rootfs)]
        run_streaming(chroot + ["apt-get", "update"], progress, "apt-get update (chroot)", env)
        run_streaming(chroot + ["apt-get", "install", "-y", "--no-install-recommends",
                                "-o", "APT::Keep-Downloaded-Packages=false"] + list(packages),
                      progress, "apt-get install (chroot)", env)
    finally:
        policy.unlink(missing_ok=True)


def ensure_debootstrap(progress):
    """Make sure debootstrap can run here; ImageBuildError saying why it cannot."""
    if not sys.platform.startswith("linux"):
        raise ImageBuildError("debootstrap runs on Linux only")
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root")
    if shutil.which("debootstrap"):
        return
    if not shutil.which("apt-get"):
        raise ImageBuildError("debootstrap is missing and there is no apt-get to install it")
    progress("installing debootstrap with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"]
    try:
        run_streaming(install, progress, "apt-get install", env)
    except ImageBuildError:
        # Usually just empty or stale package lists on a fresh machine.
        run_streaming(["apt-get", "update"], progress, "apt-get update", env)
        run_streaming(install, progress, "apt-get install", env)
    if not shutil.which("debootstrap"):
        raise ImageBuildError("apt-get installed debootstrap but it is not on PATH")


def run_streaming(cmd, progress, what, env=None):
    """Run cmd, passing each output line to progress; ImageBuildError if it fails."""
    tail = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    except OSError as exc:
        raise ImageBuildError("%s could not start: %s" % (what, exc)) from None
    with proc.stdout:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail = (tail + [line])[-OUTPUT_TAIL:]
            progress(line)
    code = proc.wait()
    if code != 0:
        raise ImageBuildError("%s failed with exit code %d:\n%s" % (what, code, "\n".join(tail)))


def trim(rootfs):
    """Drop what a sandbox never needs: package caches and lists, docs, logs.

    Links are never followed: a link in the tree may point into the host.
    """
    rootfs = pathlib.Path(rootfs)
    for rel, keep in TRIMMED_FILES:
        top = rootfs / rel
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                path = pathlib.Path(dirpath, name)
                if not keep(path):
                    with contextlib.suppress(OSError):
                        path.unlink()
    for rel in TRIMMED_FOLDERS:
        top = rootfs / rel
        if top.is_dir() and not top.is_symlink():
            for child in top.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
    for rel in EMPTIED:
        path = rootfs / rel
        if path.is_file() and not path.is_symlink():
            path.write_text("")


def mounts_under(path, mountinfo="/proc/self/mountinfo"):
    """Mount points at or below path, deepest first (debootstrap leaves /proc etc.
    mounted if it is killed)."""
    prefix = str(pathlib.Path(path).resolve())
    found = []
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4:
                    point = fields[4].replace("\\040", " ")
                    if point == prefix or point.startswith(prefix + "/"):
                        found.append(point)
    except OSError:
        pass
    return sorted(found, key=len, reverse=True)


def remove_tree(path, progress):
    """Remove the work folder, but never through a mount that leads into the host."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    left = mounts_under(path)
    if left:
        progress("warning: leaving %s in place, still mounted: %s" % (path, ", ".join(left)))
        return
    shutil.rmtree(path, ignore_errors=True)
