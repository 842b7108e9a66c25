"""%dockerrun install and image build: packages for instances without network.

Every package here is made by the test (``tests/wheels.py``) and found with
``--no-index --find-links``: nothing reaches a package index. Downloads go
to a cache folder of the test's own (``FIDDLEDOCK_WHEEL_CACHE``).
"""

import os
import uuid
import zipfile

import pytest
from IPython.core.error import UsageError

from fiddledock_magic import _install, _package_image
from fiddledock_magic._errors import TransferError
from fiddledock_magic._extension import manager_of
from fiddledock_magic._wheelhouse import (InstallError, Target, WheelsOnly, check_words,
                                          download)
from wheels import make_sdist, make_wheel

from conftest import ok


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch):
    """A folder of wheels (a package with a dependency), and a cache folder of the test's own."""
    monkeypatch.setenv("FIDDLEDOCK_WHEEL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    tag = uuid.uuid4().hex[:6]
    pkg, dep = "fdgood%s" % tag, "fddep%s" % tag
    make_wheel(folder, pkg, "1.0", {"%s/__init__.py" % pkg: "from %s import ANSWER\n" % dep},
               requires=[dep])
    make_wheel(folder, dep, "2.0", {"%s.py" % dep: "ANSWER = 42\n"})
    return folder, pkg, dep


def install_words(folder, *packages):
    return "--no-index --find-links %s %s" % (folder, " ".join(packages))


def test_install_then_import_in_the_next_cell(shell, run, line_magic, unique_name,
                                              wheelhouse):
    folder, pkg, dep = wheelhouse
    run("import sys; before = list(sys.path)", unique_name)  # the worker runs already
    out = line_magic("install %s %s" % (unique_name, install_words(folder, pkg)))
    assert "installed in %s:" % unique_name in out, out
    assert "%s-1.0" % pkg in out and "%s-2.0" % dep in out, out
    value, out, err = run("import %s\n%s.ANSWER" % (pkg, pkg), unique_name)
    assert repr(value) == "42", (out, err)
    # in the home folder's user site, ahead of the system's packages
    value, _, _ = run("import %s, site\n(%s.__file__.startswith(site.getusersitepackages()), "
                      "sys.path.index(site.getusersitepackages()) < "
                      "min(sys.path.index(p) for p in site.getsitepackages() if p in sys.path))"
                      % (pkg, pkg), unique_name)
    assert repr(value) == "(True, True)"
    # the wheelhouse copied in is gone, the network is still only lo
    value, _, _ = run("import os\n(sorted(n for n in os.listdir('/tmp') if 'wheels' in n), "
                      "sorted(os.listdir('/sys/class/net')))", unique_name)
    assert repr(value) == "([], ['lo'])"
    info = manager_of(shell).find(unique_name)
    assert manager_of(shell).backend._api.inspect_container(info.id)["HostConfig"][
        "NetworkMode"] == "none"


def test_install_in_a_kernel_then_import_without_restart(kernels, tmp_path):
    kernel = kernels(env={"FIDDLEDOCK_WHEEL_CACHE": str(tmp_path / "cache")})
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    pkg = "fdkernel%s" % uuid.uuid4().hex[:6]
    make_wheel(folder, pkg, "0.3", {"%s.py" % pkg: "print('imported from the wheel')\n"})
    ok(kernel.execute("%%dockerrun k1\nx = 1", timeout=120)[0])
    reply, msgs = kernel.execute(
        "%%dockerrun install k1 --no-index --find-links %s %s" % (folder, pkg), timeout=120)
    ok(reply)
    text = "".join(m["content"].get("text", "") for _, m in msgs if m["msg_type"] == "stream")
    assert "resolving with pip" in text and "installed in k1: %s-0.3" % pkg in text, text
    reply, msgs = kernel.execute("%%%%dockerrun k1\nimport %s\nprint(x)" % pkg)
    ok(reply)
    text = "".join(m["content"].get("text", "") for _, m in msgs if m["msg_type"] == "stream")
    assert "imported from the wheel\n1\n" in text  # same worker: x is still there


def test_sdist_only_is_refused_and_its_setup_py_never_runs(shell, run, line_magic,
                                                           unique_name, wheelhouse, tmp_path):
    folder, _, _ = wheelhouse
    marker = tmp_path / "setup-py-ran"
    make_sdist(folder, "fdsource", "1.0", marker)
    run("pass", unique_name)
    with pytest.raises(WheelsOnly) as info:
        line_magic("install %s %s" % (unique_name, install_words(folder, "fdsource")))
    text = str(info.value)
    assert "fdsource: only a source distribution was found (fdsource-1.0.tar.gz)" in text
    assert "wheels only" in text and "--network bridge" in text
    # named as a file, a folder or in a requirements file: refused before pip runs
    sdist = folder / "fdsource-1.0.tar.gz"
    project = tmp_path / "project"
    project.mkdir()
    (project / "setup.py").write_text("open(%r, 'w').write('ran')\n" % str(marker))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# the class's packages\n%s\n" % project)
    for words in (str(sdist), str(project), "-r %s" % requirements, "-e %s" % project,
                  "--no-binary :all: fdsource"):
        with pytest.raises(WheelsOnly):
            line_magic("install %s --no-index --find-links %s %s" % (unique_name, folder, words))
    assert not marker.exists()


def test_disk_too_small_is_a_clear_error_and_nothing_is_installed(shell, run, line_magic,
                                                                  unique_name, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("FIDDLEDOCK_WHEEL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    big, small = "fdbig%s" % uuid.uuid4().hex[:6], "fdsmall%s" % uuid.uuid4().hex[:6]
    # 12 MB of zeros: a wheel of a few KB, too large for a home folder of 8 MB once unpacked
    make_wheel(folder, big, "1.0", {"%s/__init__.py" % big: "", "%s/data.bin" % big:
                                    b"\0" * (12 << 20)})
    make_wheel(folder, small, "1.0", {"%s.py" % small: "OK = True\n"})
    line_magic("create %s --disk 8m" % unique_name)
    with pytest.raises(InstallError) as info:
        line_magic("install %s %s" % (unique_name, install_words(folder, big)))
    text = str(info.value)
    assert "too little space" in text and "Nothing was installed" in text, text
    assert "--disk" in text
    value, _, _ = run("import os, site\nsite_dir = site.getusersitepackages()\n"
                      "(sorted(os.listdir(site_dir)) if os.path.isdir(site_dir) else [], "
                      "sorted(n for n in os.listdir('/tmp') if 'wheels' in n))", unique_name)
    assert repr(value) == "([], [])"
    # the instance is still usable, and a package that fits still installs
    line_magic("install %s %s" % (unique_name, install_words(folder, small)))
    value, _, _ = run("import %s\n%s.OK" % (small, small), unique_name)
    assert repr(value) == "True"


def test_pip_failing_half_way_leaves_nothing_installed(shell, run, line_magic, unique_name,
                                                       tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FIDDLEDOCK_WHEEL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    tag = uuid.uuid4().hex[:6]
    first, second, clash = "fdfirst%s" % tag, "fdsecond%s" % tag, "fdclash%s" % tag
    # pip installs the dependency first; the second wheel then needs a file where the
    # first one made a folder, and pip fails with the first one already in place
    make_wheel(folder, first, "1.0", {"%s/__init__.py" % clash: "", "%s.py" % first: ""})
    make_wheel(folder, second, "1.0", {clash: "not a folder"}, requires=[first])
    run("pass", unique_name)
    with pytest.raises(InstallError) as info:
        line_magic("install %s %s" % (unique_name, install_words(folder, second)))
    assert "nothing was installed" in str(info.value)
    assert "Installing collected packages: %s, %s" % (first, second) in capsys.readouterr().out
    value, _, _ = run("import os, site\nsorted(os.listdir(site.getusersitepackages()))",
                      unique_name)
    assert repr(value) == "[]"


def test_an_installer_that_floods_is_stopped(shell, run, line_magic, unique_name, wheelhouse,
                                             monkeypatch):
    """What comes out of the instance is untrusted: a hostile installer (here: one that
    prints without end) is cut off and its instance stopped; the next cell starts it again."""
    folder, pkg, _ = wheelhouse
    run("pass", unique_name)
    real = _install.wheelinstall_source()
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 9999 + '\\n')\n"
    calls = []

    def source():  # the probe is the real one; the install floods
        calls.append(1)
        return real if len(calls) == 1 else flood
    monkeypatch.setattr(_install, "wheelinstall_source", source)
    with pytest.raises(TransferError) as info:
        line_magic("install %s %s" % (unique_name, install_words(folder, pkg)))
    assert "sent more than 4.0 MiB of output" in str(info.value)
    assert "was stopped" in str(info.value)
    value, _, err = run("1 + 1", unique_name)
    assert repr(value) == "2"


def test_bad_input_is_a_short_message(shell, line_magic, unique_name, wheelhouse):
    folder, pkg, _ = wheelhouse
    with pytest.raises(InstallError, match="no instance named"):
        line_magic("install %s %s" % (unique_name, install_words(folder, pkg)))
    with pytest.raises(InstallError, match="pip option --target is not passed through"):
        line_magic("install %s --target /x %s" % (unique_name, pkg))
    with pytest.raises(InstallError, match="name at least one package"):
        line_magic("install %s" % unique_name)
    with pytest.raises(UsageError, match="usage: %dockerrun install"):
        line_magic("install")


def test_image_build_then_cache_hit(shell, own_scope, line_magic, run, wheelhouse,
                                    docker_client, tmp_path):
    folder, pkg, dep = wheelhouse
    tag = "fiddledock-test-packages:%s" % uuid.uuid4().hex[:8]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("%s>=1.0\n" % pkg)
    try:
        out = line_magic("image build %s --no-index --find-links %s -r %s"
                         % (tag, folder, requirements))
        assert "built %s (%s==1.0)" % (tag, pkg) in out, out
        assert "Step 1/" in out  # the build's own lines, beneath the cell
        labels = docker_client.images.get(tag).labels
        assert len(labels[_package_image.INPUTS_LABEL]) == 64
        out = line_magic("image build %s %s" % (tag, install_words(folder, pkg)))
        assert "%s is up to date (cache hit" % tag in out, out
        assert "Step 1/" not in out  # nothing was built the second time
        line_magic("create classroom --image %s" % tag)
        value, _, _ = run("import %s, os\n(%s.ANSWER, os.listdir('/sys/class/net'))"
                          % (pkg, pkg), "classroom")
        assert repr(value) == "(42, ['lo'])"
    finally:
        line_magic("delete --all")
        docker_client.images.remove(tag, force=True)


def test_default_image_has_pandas_and_pip(run, unique_name):
    value, out, err = run("import pandas, pip\ndf = pandas.DataFrame({'a': [1, 2]})\n"
                          "int(df.a.sum())", unique_name)
    assert repr(value) == "3", (out, err)


# --- the notebook side alone (no engine) ---------------------------------------------

TARGET = {"python": "3.11", "implementation": "cpython", "abi": "cp311", "machine": "x86_64",
          "libc": ["glibc", "2.36"], "installed": {"NumPy": "1.24.2"}}


def test_the_instance_s_platform_becomes_pip_s_target():
    target = Target.from_probe(TARGET)
    words = target.pip_words()
    assert words[:7] == ["--only-binary=:all:", "--python-version", "3.11",
                         "--implementation", "cp", "--abi", "cp311"]
    platforms = words[8::2]
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert platforms[-4:] == ["manylinux2014_x86_64", "manylinux2010_x86_64",
                              "manylinux1_x86_64", "linux_x86_64"]
    assert target.installed == {"numpy": "1.24.2"}
    for bad in ({}, dict(TARGET, python="4; rm -rf /"), dict(TARGET, machine="x86 64")):
        with pytest.raises(InstallError):
            Target.from_probe(bad)


def test_a_wheel_rebuilt_in_a_local_folder_replaces_its_cached_copy(tmp_path):
    folder, cache = tmp_path / "wheelhouse", tmp_path / "cache"
    folder.mkdir()
    name = "fdrebuilt%s" % uuid.uuid4().hex[:6]
    make_wheel(folder, name, "1.0", {"%s.py" % name: "V = 1\n"})
    request = check_words(["--no-index", "--find-links", str(folder), name])
    target = Target.from_probe(TARGET)
    first = download(request, target, lambda line: None, cache=str(cache))
    make_wheel(folder, name, "1.0", {"%s.py" % name: "V = 2\n"})
    lines = []
    second = download(request, target, lines.append, cache=str(cache))
    assert first == second and any("already downloaded" in line for line in lines)
    with zipfile.ZipFile(second[0]) as whl:
        assert whl.read("%s.py" % name) == b"V = 2\n"


def test_requirements_that_pip_would_build_are_refused_by_name(tmp_path):
    nested = tmp_path / "more.txt"
    nested.write_text("-e ./src\n")
    top = tmp_path / "requirements.txt"
    top.write_text("pandas>=2 ; python_version >= '3.9'\n-r more.txt\n")
    with pytest.raises(WheelsOnly) as info:
        check_words(["-r", str(top)])
    assert str(info.value).startswith("-e ./src (more.txt, line 1): -e would build")
    for words, why in ((["git+https://example.org/x.git"], "a URL that is not a wheel"),
                       (["x @ https://example.org/x-1.0.tar.gz"], "a URL that is not a wheel"),
                       ([str(tmp_path)], "a folder or source archive")):
        with pytest.raises(WheelsOnly, match=why):
            check_words(words)
    request = check_words(["Pandas>=2", "--pre", "-i", "https://example.org/simple",
                           "x @ https://example.org/x-1.0-py3-none-any.whl"])
    assert request.names == ["pandas", "x"]


def test_no_fitting_wheel_and_no_such_package_are_told_apart(tmp_path):
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    name = "fdwindows%s" % uuid.uuid4().hex[:6]
    path = make_wheel(folder, name, "1.0", {"%s.py" % name: ""})
    os.rename(path, str(folder / ("%s-1.0-cp311-cp311-win_amd64.whl" % name)))
    target = Target.from_probe(TARGET)
    with pytest.raises(InstallError, match="%s: pip found wheels, but none for the instance's "
                                           "Python 3.11" % name):
        download(check_words(["--no-index", "-f", str(folder), name]), target, lambda line: None,
                 cache=str(tmp_path / "cache"))
    with pytest.raises(InstallError, match="pip found no fdnosuch for the instance's Python "
                                           "3.11 .* is the name right"):
        download(check_words(["--no-index", "-f", str(folder), "fdnosuch"]), target, lambda line: None,
                 cache=str(tmp_path / "cache"))
