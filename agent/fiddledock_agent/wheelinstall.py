"""Installs a wheelhouse in an instance, for ``%dockerrun install``; or says what the instance is.

Not part of the booted agent (it is not in ``MODULES``): the notebook side
runs this file's text through ``docker exec`` as root, as
``python3 -I -S -c <text> REQUEST`` (REQUEST is JSON: mode, uid, home, and
for install the wheelhouse folder and the requirements). Standard library
only, Python 3.8+. It never reaches a network: pip runs with ``--no-index``
on the wheels the notebook side copied into the instance.

Modes:

* ``probe``: JSON on stderr: the Python (version, implementation, ABI), the
  machine, the C library, pip's version, the installed distributions, the
  home folder's free bytes and files. The notebook side picks wheels by it.
* ``install``: pip works out what it would install (``--dry-run``); if that
  does not fit in the home folder (bytes or files) nothing is installed;
  else pip installs it into the user site under the home folder, its output
  on stdout. If pip fails, what it added there is removed again, so no half
  install stays behind. The wheelhouse is removed in any case. JSON on
  stderr: what was installed.

As the file helper does, it takes the sandbox user's identity for files
while its real uid stays 0; pip itself runs as that user (its user site is
that user's).

Exit codes: 0 done; 2 no pip; 3 not enough space (stderr: JSON ``{"need":
bytes, "free": bytes, "files": n, "files_free": n}``); 4 an OS error; 5 pip
failed (stderr: its last lines).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

NO_PIP, NO_SPACE, OS_ERROR, PIP_FAILED = 2, 3, 4, 5
PAGE = 4096  # a tmpfs stores each file in whole pages
TAIL = 20  # lines of pip's output kept for an error
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Failed(Exception):
    """Ends the helper with an exit code and a text on stderr (after the wheelhouse is gone)."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


def drop_privileges(uid):
    """Files as uid (effective), but real and saved uid 0: out of reach of uid's processes."""
    if os.getuid() != 0:
        return
    os.setgroups([])
    os.setresgid(0, uid, 0)
    os.setresuid(0, uid, 0)


def become(uid):
    """For pip: the sandbox user through and through (its user site is then enabled)."""
    if os.getuid() == 0:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)


def user_paths(home):
    """``(site-packages, scripts)`` of the user scheme under home, as pip --user uses them."""
    scheme = "posix_user"
    values = {"userbase": os.path.join(home, ".local")}
    return (sysconfig.get_path("purelib", scheme, vars=values),
            sysconfig.get_path("scripts", scheme, vars=values))


def installed(home):
    """``{name: version}`` of the distributions the instance's Python sees."""
    import site
    try:
        from importlib import metadata
    except ImportError:  # before Python 3.8: nothing known, every wheel is sent
        return {}
    path = list(sys.path) + site.getsitepackages() + [user_paths(home)[0]]
    found = {}
    for dist in metadata.distributions(path=[p for p in path if os.path.isdir(p)]):
        name = dist.metadata["Name"]
        if name and name.lower() not in found:
            found[name.lower()] = dist.version
    return found


def libc():
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        return ["glibc", version]
    except (ValueError, OSError, AttributeError):
        return ["other", ""]


def free_space(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_favail


def probe(home):
    have = installed(home)
    free, files = free_space(home)
    answer = {
        "python": "%d.%d" % sys.version_info[:2],
        "implementation": sys.implementation.name,
        "abi": "cp%d%d%s" % (sys.version_info[0], sys.version_info[1], sys.abiflags),
        "machine": os.uname().machine,
        "libc": libc(),
        "pip": have.get("pip"),
        "installed": have,
        "free": free,
        "files_free": files,
    }
    sys.stderr.write(json.dumps(answer))


def pip(args, uid, home, echo):
    """Run pip as the sandbox user; ``(exit code, last lines)``; its lines go to stdout if echo."""
    env = {"PATH": SYSTEM_PATH, "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp",
           "PIP_BREAK_SYSTEM_PACKAGES": "1",  # a user install never touches the system's files
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pip"] + args, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=home,
                            preexec_fn=lambda: become(uid))
    tail = []
    out = sys.stdout.buffer
    for line in proc.stdout:
        tail = (tail + [line.decode("utf-8", "replace").rstrip()])[-TAIL:]
        if echo:
            out.write(line)
            out.flush()
    return proc.wait(), tail


def wheel_cost(path):
    """``(bytes, files)`` the wheel takes once installed on a tmpfs."""
    with zipfile.ZipFile(path) as whl:
        infos = whl.infolist()
    folders = {os.path.dirname(info.filename) for info in infos}
    size = sum((info.file_size + PAGE - 1) // PAGE * PAGE for info in infos)
    return size + len(folders) * PAGE, len(infos) + len(folders)


def planned(wheels, requirements, uid, home):
    """The wheel files pip would install (all of them where pip cannot say)."""
    everything = [os.path.join(wheels, n) for n in os.listdir(wheels) if n.endswith(".whl")]
    report = os.path.join(wheels, ".report.json")
    code, tail = pip(["install", "--user", "--no-index", "--find-links", wheels, "--dry-run",
                      "--quiet", "--report", report] + requirements, uid, home, echo=False)
    if code != 0:
        if any("no such option" in line for line in tail):
            return everything  # a pip older than 22.2
        raise Failed(PIP_FAILED, "\n".join(tail))
    with open(report, encoding="utf-8") as fh:
        items = json.load(fh).get("install") or []
    chosen = []
    for item in items:
        url = (item.get("download_info") or {}).get("url", "")
        name = os.path.basename(url)
        if name.endswith(".whl") and os.path.isfile(os.path.join(wheels, name)):
            chosen.append(os.path.join(wheels, name))
    return chosen


def entries(folders):
    found = set()
    for folder in folders:
        if os.path.isdir(folder):
            found.update(os.path.join(folder, n) for n in os.listdir(folder))
    return found


def remove_new(before, folders):
    """Remove what pip added to the user site and scripts folder (a failed install)."""
    for path in sorted(entries(folders) - before):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


def install(request):
    uid, home, wheels = request["uid"], request["home"], request["wheels"]
    requirements = list(request["requirements"])
    if "pip" not in installed(home):
        raise Failed(NO_PIP, "the instance's image has no pip (python3 -m pip), which installs the "
                     "wheels; use an image that has it, e.g. the default one")
    folders = user_paths(home)
    chosen = planned(wheels, requirements, uid, home)
    need = files = 0
    for path in chosen:
        size, count = wheel_cost(path)
        need, files = need + size, files + count
    free, files_free = free_space(home)
    # Some room left over: pip writes RECORD and INSTALLER files, the cell needs some too.
    if need + (1 << 20) > free or files + 64 > files_free:
        raise Failed(NO_SPACE, json.dumps({"need": need, "free": free, "files": files,
                                   "files_free": files_free}))
    before = entries(folders)
    code, tail = pip(["install", "--user", "--no-index", "--find-links", wheels, "--no-compile",
                      "--no-warn-script-location", "--progress-bar", "off"] + requirements,
                     uid, home, echo=True)
    if code != 0:
        remove_new(before, folders)
        raise Failed(PIP_FAILED, "\n".join(tail))
    done = [line for line in tail if line.startswith("Successfully installed")]
    sys.stderr.write(json.dumps({"installed": done[-1].split()[2:] if done else [],
                                 "site": folders[0]}))


def main(request):
    drop_privileges(request["uid"])
    try:
        if request["mode"] == "probe":
            probe(request["home"])
        else:
            try:
                install(request)
            finally:
                shutil.rmtree(request["wheels"], ignore_errors=True)
    except Failed as exc:
        return exc.code, str(exc)
    except OSError as exc:
        return OS_ERROR, "%s: %s" % (exc.strerror or exc, getattr(exc, "filename", "") or "")
    return 0, None


if __name__ == "__main__":
    CODE, TEXT = main(json.loads(sys.argv[1]))
    if TEXT:
        sys.stderr.write(TEXT)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(CODE)
