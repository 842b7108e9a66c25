"""Wheels for an instance, resolved and downloaded on the notebook side.

Instances have no network, so ``%dockerrun install`` and ``%dockerrun image
build`` run the user's own pip here (``python -m pip download``, with their
pip configuration: index, proxy, ``--index-url``, ``--no-index --find-links
DIR``, ``-r requirements.txt``) for the instance's Python and platform.

Wheels only: building a source distribution runs the package's own code
(``setup.py`` or a build backend) on this machine. pip's
``--only-binary=:all:`` keeps it from building what it finds on an index or
in a folder of links, but pip still builds a local folder, a local source
archive or a VCS URL named as a requirement; ``check_words`` refuses those
(on the command line and in requirements files) before pip runs, and pip
options that could change that are not passed through.

Downloads are kept in a cache folder (``FIDDLEDOCK_WHEEL_CACHE``, default
``~/.cache/fiddledock/wheels``): pip does not download again a wheel that is
there.
"""

import dataclasses
import filecmp
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List

from ._errors import FiddleDockError

# pip options passed through, and whether each takes a value. Anything else
# is refused: --no-binary, -e or --src would build on this machine, and the
# target options are ours.
PASSED_OPTIONS = {
    "-i": True, "--index-url": True, "--extra-index-url": True, "--no-index": False,
    "-f": True, "--find-links": True, "-r": True, "--requirement": True, "-c": True,
    "--constraint": True, "--pre": False, "--no-deps": False, "--prefer-binary": False,
    "--trusted-host": True, "--proxy": True, "--cert": True, "--client-cert": True,
    "--timeout": True, "--retries": True, "-q": False, "--quiet": False, "-v": False,
    "--verbose": False, "--isolated": False, "--require-hashes": False,
}
REQUIREMENT_FILE_OPTIONS = ("-r", "--requirement", "-c", "--constraint")
# Options a requirements file may hold that would build, or run, something here.
BUILDING_OPTIONS = ("-e", "--editable", "--no-binary", "--src")
# Our pip environment leaves out the user's settings of the options we set.
OUR_PIP_SETTINGS = ("PIP_NO_BINARY", "PIP_ONLY_BINARY", "PIP_PLATFORM", "PIP_PYTHON_VERSION",
                    "PIP_IMPLEMENTATION", "PIP_ABI", "PIP_DEST", "PIP_EDITABLE", "PIP_SRC")
NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
SAVED = ("Saved ", "File was already downloaded ")
# manylinux_2_N for every glibc from the instance's down to 2.17 (and the old
# names of 2.17, 2.12 and 2.5); older ones are not built for today's Pythons.
OLDEST_GLIBC = 17
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
WHEELS_ONLY_HELP = (
    "FiddleDock installs wheels only: building from source would run the package's own "
    "setup code on this machine. Use a wheel of it (one you built where you trust it, "
    "with --find-links FOLDER), an index that has one, or build it inside an instance "
    "that has a network (%dockerrun create NAME --network bridge, then pip install in a "
    "cell there)")


class InstallError(FiddleDockError):
    """``%dockerrun install`` or ``image build`` could not get or install the packages."""


class WheelsOnly(InstallError):
    """A requirement would have to be built from source; ``requirement`` names it."""

    def __init__(self, requirement, why):
        self.requirement = requirement
        super().__init__("%s: %s. %s" % (requirement, why, WHEELS_ONLY_HELP))


def normalized(name):
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(filename):
    """``(normalized name, version)`` of a wheel file's name; None if it is not one."""
    match = WHEEL_RE.match(os.path.basename(filename))
    if match is None:
        return None
    return normalized(match.group("name")), match.group("version")


def cache_dir():
    chosen = os.environ.get("FIDDLEDOCK_WHEEL_CACHE", "").strip()
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fiddledock", "wheels")


# --- what the user asked for ------------------------------------------------------
@dataclasses.dataclass
class PipRequest:
    """The user's pip words, checked: ``words`` go to pip download as they are;
    ``names`` are the requested distributions (normalized), for the instance's pip."""
    words: List[str]
    names: List[str]


def check_words(words):
    """A PipRequest from ``%dockerrun install NAME``'s words after NAME; InstallError if
    an option is not passed through or a requirement would build from source."""
    names, i = [], 0
    if not words:
        raise InstallError("name at least one package (or -r requirements.txt)")
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            option, eq, value = word.partition("=")
            if option in BUILDING_OPTIONS:
                raise WheelsOnly(word, "%s would build on this machine" % option)
            if option not in PASSED_OPTIONS:
                raise InstallError("pip option %s is not passed through; these are: %s"
                                   % (option, " ".join(sorted(PASSED_OPTIONS))))
            if PASSED_OPTIONS[option] and not eq:
                i += 1
                if i == len(words):
                    raise InstallError("pip option %s needs a value" % option)
                value = words[i]
            if option in REQUIREMENT_FILE_OPTIONS:
                names += _requirements_file(value, option in ("-r", "--requirement"), set())
        else:
            names.append(_requirement(word))
        i += 1
    if not names:
        raise InstallError("name at least one package (or -r requirements.txt)")
    return PipRequest(list(words), names)


def _requirement(text, where=""):
    """The distribution name a requirement asks for; WheelsOnly if pip would build it."""
    spec = text.split(";", 1)[0].strip()
    url = spec.split("@", 1)[1].strip() if "@" in spec and "://" not in spec.split("@")[0] \
        else spec
    remote = "://" in url
    if remote or os.sep in url or url.startswith((".", "~")) or os.path.exists(url):
        if not url.split("#", 1)[0].split("?", 1)[0].endswith(".whl"):
            what = "a URL that is not a wheel" if remote else "a folder or source archive"
            raise WheelsOnly(text + where, "%s would be built by pip" % what)
        named = wheel_name(url.split("#", 1)[0].split("?", 1)[0])
        if named is None:
            raise InstallError("%s%s is not a wheel's file name" % (text, where))
        return named[0]
    match = NAME_RE.match(spec)
    if match is None:
        raise InstallError("%r%s is not a requirement pip understands" % (text, where))
    return normalized(match.group(1))


def _requirements_file(path, requested, seen):
    """Names requested by a requirements file (none for a constraints file),
    after checking every line as the command line is checked."""
    path = os.path.abspath(os.path.expanduser(path))
    if path in seen:
        return []
    seen.add(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise InstallError("cannot read requirements file %s: %s"
                           % (path, exc.strerror or exc)) from None
    names = []
    for number, line in enumerate(text.replace("\\\n", "").splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        where = " (%s, line %d)" % (os.path.basename(path), number)
        if not line:
            continue
        if line.startswith("-"):
            option, _, value = line.replace("=", " ", 1).partition(" ")
            value = value.strip()
            if option in BUILDING_OPTIONS:
                raise WheelsOnly(line + where, "%s would build on this machine" % option)
            if option in REQUIREMENT_FILE_OPTIONS:
                nested = os.path.join(os.path.dirname(path), value)
                names += _requirements_file(nested, requested and option in
                                            ("-r", "--requirement"), seen)
            continue
        name = _requirement(line, where)
        if requested:
            names.append(name)
    return names


# --- the instance's platform --------------------------------------------------------
@dataclasses.dataclass
class Target:
    """What pip must download for: an instance's Python and platform (from its probe)."""
    python: str  # "3.11"
    implementation: str  # "cp"
    abi: str  # "cp311"
    platforms: List[str]
    installed: Dict[str, str]  # normalized name -> version

    @classmethod
    def from_probe(cls, answer):
        try:
            python = str(answer["python"])
            machine = str(answer["machine"])
            kind, version = answer["libc"]
            implementation = {"cpython": "cp", "pypy": "pp"}.get(answer["implementation"], "py")
            abi = str(answer["abi"])
            installed = {normalized(str(k)): str(v)
                         for k, v in dict(answer.get("installed") or {}).items()}
        except (KeyError, TypeError, ValueError):
            raise InstallError("the instance did not say which Python it has") from None
        if not re.match(r"^3\.\d+$", python) or not re.match(r"^[A-Za-z0-9_]+$", machine + abi):
            raise InstallError("the instance's Python is not one FiddleDock knows: %r" % python)
        return cls(python, implementation, abi, linux_platforms(machine, kind, version), installed)

    def describe(self):
        return "Python %s (%s) on %s" % (self.python, self.abi, self.platforms[0])

    def pip_words(self):
        words = ["--only-binary=:all:", "--python-version", self.python,
                 "--implementation", self.implementation, "--abi", self.abi]
        for platform in self.platforms:
            words += ["--platform", platform]
        return words


def linux_platforms(machine, libc, version):
    """Platform tags a Linux with this machine and C library runs, newest first."""
    platforms = []
    match = re.match(r"^2\.(\d+)", str(version))
    if libc == "glibc" and match:
        for minor in range(int(match.group(1)), OLDEST_GLIBC - 1, -1):
            platforms.append("manylinux_2_%d_%s" % (minor, machine))
        for minor, legacy in sorted(LEGACY_MANYLINUX.items(), reverse=True):
            if minor <= int(match.group(1)):
                platforms.append("%s_%s" % (legacy, machine))
    platforms.append("linux_%s" % machine)
    return platforms


# --- pip download ----------------------------------------------------------------------
def download(request, target, progress, cache=None):
    """Run pip download for target; the wheel files it chose (paths in the cache)."""
    cache = cache or cache_dir()
    os.makedirs(cache, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--dest", cache, "--progress-bar", "off",
           "--disable-pip-version-check"] + target.pip_words() + request.words
    progress("resolving with pip for %s (downloads cached in %s)" % (target.describe(), cache))
    code, lines = _run_pip(cmd, progress)
    if code != 0:
        raise _why_not(lines, request, target, cache)
    chosen, local = [], {}
    for line in lines:
        line = line.strip()
        if line.startswith("Processing ") and line.split()[1].endswith(".whl"):
            path = line.split()[1]
            local[os.path.basename(path)] = path
        for prefix in SAVED:
            if line.startswith(prefix):
                path = os.path.realpath(line[len(prefix):].strip())
                if os.path.dirname(path) == os.path.realpath(cache) and wheel_name(path):
                    chosen.append(path)
    if not chosen:
        raise InstallError("pip finished but did not say which wheels it chose (pip %s)"
                           % " ".join(request.words))
    for path in chosen:
        _refresh_from(local.get(os.path.basename(path)), path)
    return sorted(set(chosen))


def _refresh_from(source, cached):
    """A wheel rebuilt in a local folder under the same name replaces its cached copy
    (pip keeps a file it finds in the cache; an index's files never change, a folder's may)."""
    if source and os.path.isfile(source) and not filecmp.cmp(source, cached, shallow=False):
        shutil.copyfile(source, cached)


def _pip_env():
    env = {k: v for k, v in os.environ.items() if k.upper() not in OUR_PIP_SETTINGS}
    env["PIP_NO_INPUT"] = "1"  # a kernel cannot answer pip's questions
    return env


def _run_pip(cmd, progress):
    """``(exit code, output lines)``; each line also goes to progress when one is given."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=_pip_env())
    except OSError as exc:
        raise InstallError("pip could not start here: %s" % exc) from None
    lines = []
    with proc.stdout:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            lines.append(line)
            if progress is not None:
                progress(line)
    return proc.wait(), lines


def _why_not(lines, request, target, cache):
    """The error for a failed pip download: a requirement that only has a source
    distribution is named as such (pip is asked again, verbosely, for that one)."""
    missing = [line.split("No matching distribution found for", 1)[1].strip()
               for line in lines if "No matching distribution found for" in line]
    if any("No module named pip" in line for line in lines):
        return InstallError("this kernel's Python has no pip (%s -m pip); install it here"
                            % sys.executable)
    other_wheels = []
    for requirement in missing:
        cmd = [sys.executable, "-m", "pip", "download", "--dest", cache, "--no-deps", "-vv",
               "--progress-bar", "off"] + target.pip_words() + _sources_words(request.words) \
            + [requirement]
        _, verbose = _run_pip(cmd, None)
        sources = [line.rsplit("/", 1)[-1] for line in verbose
                   if "No sources permitted for" in line]
        if sources:
            return WheelsOnly(requirement, "only a source distribution was found (%s), no "
                              "wheel for %s" % (", ".join(sorted(set(sources))[:3]),
                                                target.describe()))
        if any("none of the wheel's tags" in line for line in verbose):
            other_wheels.append(requirement)
    if other_wheels:
        return InstallError("%s: pip found wheels, but none for the instance's %s. %s"
                            % (", ".join(other_wheels), target.describe(), WHEELS_ONLY_HELP))
    if missing:
        return InstallError("pip found no %s for the instance's %s: is the name right, and is "
                            "it on the index or in the folder you named?"
                            % (", ".join(missing), target.describe()))
    tail = [line for line in lines if line.strip()][-3:]
    return InstallError("pip download failed: %s" % " / ".join(tail))


def _sources_words(words):
    """The index and link options of the user's words (for asking pip about one requirement)."""
    kept, i = [], 0
    while i < len(words):
        option = words[i].partition("=")[0]
        takes = PASSED_OPTIONS.get(option)
        if option in REQUIREMENT_FILE_OPTIONS or not words[i].startswith("-"):
            i += 2 if takes and "=" not in words[i] else 1
            continue
        kept.append(words[i])
        if takes and "=" not in words[i] and i + 1 < len(words):
            kept.append(words[i + 1])
            i += 1
        i += 1
    return kept


def pins(request, wheels):
    """What the instance's pip is asked for: each requested name at the version
    resolved here (its dependencies are left to it: what the instance already
    has is kept when it fits)."""
    versions = dict(wheel_name(path) for path in wheels)
    missing = [name for name in request.names if name not in versions]
    if missing:
        raise InstallError("pip did not download %s (installed here already counts for "
                           "nothing: the instance needs its own copy)" % ", ".join(missing))
    return sorted(set("%s==%s" % (name, versions[name]) for name in request.names))


def needed(wheels, target):
    """The wheels the instance does not have at that version already."""
    return [path for path in wheels if target.installed.get(wheel_name(path)[0])
            != wheel_name(path)[1]]
