"""The package itself: public names, the protocol's framing, the shipped wheel."""

import json
import subprocess
import sys
import zipfile

import pytest

import fiddledock_magic
from fiddledock_agent import MODULES, protocol


def test_public_names_are_exactly_what_is_meant_to_be_public():
    assert sorted(fiddledock_magic.__all__) == sorted([
        "AgentError", "CellEnded", "CellError", "CellKilled", "CellTimeout", "DockerRun",
        "EngineError", "EngineUnavailable", "FiddleDockError", "ImageBuildError",
        "ImageNotFound", "InstanceBusy", "InstanceConflict", "InstanceLost",
        "InstanceNotFound", "TransferError", "UnsafeArchive",
        "load_ipython_extension", "unload_ipython_extension",
    ])
    public = {n for n in dir(fiddledock_magic) if not n.startswith("_")}
    assert public == set(fiddledock_magic.__all__)


def test_every_error_has_one_root():
    for name in fiddledock_magic.__all__:
        obj = getattr(fiddledock_magic, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, fiddledock_magic.FiddleDockError), name


def test_frames_survive_any_split():
    frames = [({"type": "stream", "name": "stdout"}, bytes(range(256)) * 3),
              ({"type": "done", "status": "ok"}, b""),
              ({"type": "display", "data": {"text/plain": "é"}}, b"\xff")]
    data = b"".join(protocol.encode(h, p) for h, p in frames)
    for step in (1, 3, 7, len(data)):
        reader = protocol.FrameReader()
        got = []
        for i in range(0, len(data), step):
            reader.feed(data[i:i + step])
            got.extend(reader.frames())
        assert got == frames
        assert reader.pending() == 0


def test_garbage_is_a_protocol_error():
    reader = protocol.FrameReader()
    reader.feed(b"\x00\x00\x00\x02\x00\x00\x00\x00[]")
    with pytest.raises(protocol.ProtocolError):
        reader.frames()


def test_agent_runs_locally_over_pipes():
    """The agent speaks the protocol over plain pipes (no Docker needed)."""
    from fiddledock_magic._agent_files import boot_payload, bootstrap_source
    proc = subprocess.Popen([sys.executable, "-c", bootstrap_source()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    modules, payload = boot_payload()
    proc.stdin.write(protocol.encode({"type": "boot", "modules": modules, "config": {}}, payload))
    proc.stdin.write(protocol.encode({"type": "execute", "from": "c", "id": 1}, b"print(40 + 2)"))
    proc.stdin.flush()
    reader = protocol.FrameReader()
    events = []
    while not events or events[-1][0] != "done":
        reader.feed(proc.stdout.read1(65536))
        events.extend((h["type"], p) for h, p in reader.frames())
    proc.stdin.write(protocol.encode({"type": "shutdown", "from": "c"}))
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    assert events == [("stream", b"42\n"), ("done", b"")]


def test_wheel_ships_the_agent_and_the_image(tmp_path):
    root = fiddledock_magic.__file__.rsplit("/fiddledock_magic/", 1)[0]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), root], check=True)
    wheel = next(tmp_path.glob("fiddledock_magic-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in list(MODULES) + ["bootstrap", "__init__"]:
        assert "fiddledock_agent/%s.py" % module in names
    assert "fiddledock_magic/_image_context/Dockerfile" in names


def test_boot_payload_is_json_of_every_module():
    from fiddledock_magic._agent_files import boot_payload
    modules, payload = boot_payload()
    assert modules == list(MODULES)
    assert set(json.loads(payload)) == set(MODULES)
