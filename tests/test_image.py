"""The default sandbox image, against the real Docker engine (no mocks).

Builds the image if it is missing (minutes the first time, then cached by the
engine). Containers here never get a network.
"""


import pytest

from fiddledock_magic import _image

@pytest.fixture(scope="module")
def client(docker_client):
    return docker_client  # conftest's: fails under CI without an engine, never skips


@pytest.fixture(scope="module")
def image(client):
    tag = _image.DEFAULT_IMAGE
    if not _image.image_exists(client, tag):
        lines = []
        try:
            _image.build_default_image(client, tag, progress=lines.append)
        except _image.ImageBuildError as exc:
            pytest.fail(f"building {tag} failed: {exc}\n" + "\n".join(lines[-30:]))
    return tag


def run(client, image, code, **kwargs):
    """Run python3 -c CODE in a fresh, network-less container; return its stdout."""
    out = client.containers.run(
        image, ["python3", "-c", code], network_mode="none", remove=True,
        stdout=True, stderr=False, **kwargs,
    )
    return out.decode().strip()


def test_context_dir_has_dockerfile():
    ctx = _image.context_dir()
    dockerfile = ctx / "Dockerfile"
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    assert "ARG BASE=" in text and "FROM ${BASE}" in text


def test_image_exists(client, image):
    assert _image.image_exists(client, image)
    assert not _image.image_exists(client, "fiddledock-no-such-image:0")


def test_numpy_and_matplotlib_import(client, image):
    out = run(client, image,
              "import numpy, matplotlib; print(numpy.__version__, matplotlib.get_backend())")
    version, backend = out.split()
    assert version
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
