"""The default sandbox image and the image calls on the real Docker engine (no mocks).

Builds the default image if it is missing (minutes the first time, then
cached by the engine). Images a test makes carry a tag of its own and are
removed; the shared default image and its bases are never touched.
Containers and builds here never get a network, and no test reaches a
registry off this machine (the registries here are on 127.0.0.1).
"""

import io
import os
import re
import socket
import subprocess
import sys
import tarfile
import uuid

import pytest
from conftest import missing

from fiddledock_magic import _image
from fiddledock_magic._docker_images import DockerImages
from fiddledock_magic._errors import EngineUnavailable, FiddleDockError, ImageBuildError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client(docker_client):
    return docker_client  # conftest's: fails under CI without an engine, never skips


@pytest.fixture(scope="module")
def images(client):
    return DockerImages(client.api)


@pytest.fixture(scope="module")
def image(images):
    tag = _image.DEFAULT_IMAGE
    if not images.exists(tag):
        lines = []
        try:
            _image.build_default_image(images, tag, progress=lines.append)
        except ImageBuildError as exc:
            pytest.fail("building %s failed: %s\n%s" % (tag, exc, "\n".join(lines[-30:])))
    return tag


@pytest.fixture
def own_tag(client):
    """A tag for this test's image, removed afterwards (an untag if another tag shares it)."""
    tag = "fiddledock-imagetest-%s:1" % uuid.uuid4().hex[:8]
    yield tag
    try:
        client.api.remove_image(tag)
    except Exception:  # never built: nothing to remove
        pass


def run(client, image, code, **kwargs):
    """Run python3 -c CODE in a fresh, network-less container; return its stdout."""
    out = client.containers.run(
        image, ["python3", "-c", code], network_mode="none", remove=True,
        stdout=True, stderr=False, **kwargs,
    )
    return out.decode().strip()


def cli(*args, env=None):
    """``python -m fiddledock_magic ARGS``: (exit code, output)."""
    done = subprocess.run([sys.executable, "-m", "fiddledock_magic"] + list(args), cwd=ROOT,
                          env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=300)
    return done.returncode, done.stdout.decode()


def test_context_dir_has_dockerfile():
    ctx = _image.context_dir()
    dockerfile = ctx / "Dockerfile"
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    assert "ARG BASE=" in text and "FROM ${BASE}" in text


def test_images_tells_present_from_absent(images, image):
    assert images.exists(image)
    assert not images.exists("fiddledock-no-such-image:0")
    assert images.inspect("fiddledock-no-such-image:0") is None
    assert images.inspect(image)["Config"]["User"] == "1000:1000"


def test_build_image_says_the_default_image_exists(image):
    code, out = cli("build-image")
    assert (code, out) == (0, "fiddledock: %s already exists\n" % image)


def test_numpy_and_matplotlib_work(client, image):
    out = run(client, image, "import numpy, matplotlib\n"
                             "print(numpy.__version__, numpy.arange(10).sum(), "
                             "matplotlib.get_backend())")
    version, total, backend = out.split()
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", version), version
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 20), version
    assert total == "45"
    assert backend.lower() == "agg"


def test_runs_as_uid_1000_by_default(client, image):
    out = run(client, image, "import os; print(os.getuid(), os.getgid(), os.environ['HOME'], os.getcwd())")
    assert out.split() == ["1000", "1000", "/home/sandbox", "/home/sandbox"]
    assert client.images.get(image).attrs["Config"]["User"] == "1000:1000"


def test_python_is_at_least_3_8(client, image):
    out = run(client, image, "import sys; print('%d %d' % sys.version_info[:2])")
    assert tuple(int(x) for x in out.split()) >= (3, 8)


def test_plots_under_hardened_settings(client, image):
    """What an instance looks like: read-only root, tmpfs, no capabilities."""
    code = (
        "import io, matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3])\n"
        "buf = io.BytesIO()\n"
        "plt.savefig(buf, format='png')\n"
        "print(buf.getvalue()[:8] == b'\\x89PNG\\r\\n\\x1a\\n')\n"
    )
    out = client.containers.run(
        image, ["python3", "-c", code], network_mode="none", remove=True,
        read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777",
               "/home/sandbox": "rw,nosuid,nodev,size=64m,mode=0700,uid=1000,gid=1000"},
        stdout=True, stderr=True,
    ).decode()
    # stderr too: matplotlib must not warn about an unwritable config dir.
    assert out.strip() == "True", out


# --- the build, through DockerImages --------------------------------------------

def test_the_sandbox_dockerfile_builds_on_the_offline_base_without_network(
        client, images, image, own_tag):
    base = _image.BASE_IMAGE_OFFLINE
    if not images.exists(base):
        missing("%s is not on this engine (the default image came from a registry)" % base)
    lines = []
    _image.build_sandbox_image(images, own_tag, base, network=False, progress=lines.append)
    assert lines[0].startswith("building %s from %s" % (own_tag, base))
    assert lines[-1] == "built %s" % own_tag
    assert "Successfully tagged %s" % own_tag in lines  # the engine's output, line by line
    config = images.inspect(own_tag)["Config"]
    assert config["Labels"][_image.BASE_LABEL] == base
    assert config["User"] == "1000:1000"
    assert run(client, own_tag, "import numpy; print(numpy.ones(3).sum())") == "3.0"


def test_a_failing_build_step_is_one_clear_error(images, image, own_tag, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM %s\nRUN echo about to fail && exit 3\n" % image)
    lines = []
    with pytest.raises(ImageBuildError, match=r"^docker build failed: .*returned a non-zero "
                                              r"code: 3$"):
        images.build(tmp_path, own_tag, lines.append, network=False)
    assert "about to fail" in lines
    assert not images.exists(own_tag)


def test_a_base_that_cannot_be_pulled_fails_the_command_in_one_line(images, own_tag):
    # The build's FROM asks the engine for a registry on this machine that refuses.
    code, out = cli("build-image", "--tag", own_tag,
                    env={"FIDDLEDOCK_BASE_IMAGE": "127.0.0.1:1/fiddledock-none:0"})
    last = out.strip().splitlines()[-1]
    assert code == 1
    assert last.startswith("fiddledock: docker build failed: ") and "127.0.0.1:1" in last, out
    assert "Traceback" not in out
    assert not images.exists(own_tag)


# --- pull and import ------------------------------------------------------------

def test_a_registry_that_refuses_means_no_registry(images):
    lines = []
    assert _image._try_pull(images, "127.0.0.1:1/fiddledock-none:0", lines.append) is False
    assert lines[-1].startswith("pull of 127.0.0.1:1/fiddledock-none:0 failed: ")
    assert "connection refused" in lines[-1]


def test_a_registry_that_never_answers_is_given_up_on(images):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)  # accepts connections (the kernel does) and never answers
    ref = "127.0.0.1:%d/fiddledock-none:0" % silent.getsockname()[1]
    try:
        with pytest.raises(EngineUnavailable, match="said nothing about the pull of %s for 2 s"
                                                    % re.escape(ref)):
            images.pull(ref, print, first_timeout=2)
    finally:
        silent.close()  # the engine's request fails, and the abandoned thread ends
    assert not images.exists(ref)


def test_a_root_filesystem_tarball_is_imported_with_its_config(client, images, own_tag, tmp_path):
    tarball = tmp_path / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        data = b"hello from the tarball\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    images.import_tar(tarball, own_tag, changes=_image.OFFLINE_BASE_CONFIG)
    info = images.inspect(own_tag)
    assert "LANG=C.UTF-8" in info["Config"]["Env"]
    assert info["Config"]["Cmd"] == ["python3"]
    listing = client.api.get_image(own_tag)  # the layer holds our one file
    with tarfile.open(fileobj=io.BytesIO(b"".join(listing))) as saved:
        layers = [m for m in saved.getmembers() if m.name.endswith("layer.tar")]
        layer = tarfile.open(fileobj=saved.extractfile(layers[0]))
        assert layer.extractfile("hello.txt").read() == b"hello from the tarball\n"


def test_a_tarball_that_is_not_one_is_refused(images, own_tag, tmp_path):
    garbage = tmp_path / "rootfs.tar"
    garbage.write_bytes(b"not a tar " * 100)
    with pytest.raises(FiddleDockError, match="invalid tar header"):
        images.import_tar(garbage, own_tag)
    assert not images.exists(own_tag)


def test_without_root_the_offline_route_says_what_to_do(images, own_tag, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageBuildError) as info:
        _image.build_offline_base(images, own_tag, progress=print)
    text = str(info.value)
    assert text.startswith("no image registry is reachable, and the offline base image %s "
                           "cannot be built here" % own_tag)
    assert "FIDDLEDOCK_BASE_IMAGE" in text and "sudo python -m fiddledock_magic build-image" in text
    assert text.endswith("Why not here: debootstrap needs root")
    assert not images.exists(own_tag)
