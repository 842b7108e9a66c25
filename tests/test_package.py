"""The package itself: public names, the protocol's framing, the shipped wheel."""

import json
import signal
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


def local_agent(tmp_path):
    """The bootstrap run as a local process, and a relay to it: ``(agent, relay)``."""
    from fiddledock_magic._agent_files import bootstrap_source, relay_source
    address = str(tmp_path / "agent.sock")
    agent = subprocess.Popen([sys.executable, "-c", bootstrap_source(), address],
                             stdin=subprocess.DEVNULL)
    relay = subprocess.Popen([sys.executable, "-I", "-S", "-c", relay_source(), "10", address],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return agent, relay


def test_agent_runs_locally_over_pipes(tmp_path):
    """The agent speaks the protocol to a relay's pipes (no Docker needed)."""
    from fiddledock_magic._agent_files import boot_payload
    agent, relay = local_agent(tmp_path)
    try:
        modules, payload = boot_payload()
        relay.stdin.write(protocol.encode({"type": "boot", "modules": modules, "config": {}},
                                          payload))
        relay.stdin.write(protocol.encode({"type": "execute", "id": 1}, b"print(40 + 2)"))
        relay.stdin.flush()
        reader = protocol.FrameReader()
        events = []
        while not events or events[-1][0] != "done":
            reader.feed(relay.stdout.read1(65536))
            events.extend((h["type"], p) for h, p in reader.frames())
        relay.stdin.write(protocol.encode({"type": "shutdown"}))
        relay.stdin.close()
        assert agent.wait(timeout=10) == 0
        # it stayed while the agent served it; the agent ends it when it lets go
        assert relay.wait(timeout=10) in (0, -signal.SIGKILL)
    finally:
        agent.kill()
        relay.kill()
    assert events == [("stream", b"42\n"), ("done", b"")]


def test_the_bootstrap_answers_with_the_catalogues_need_boot(tmp_path):
    """The bootstrap writes need_boot itself (no module is loaded yet): the same message."""
    agent, relay = local_agent(tmp_path)
    try:
        relay.stdin.write(protocol.encode(protocol.hello("test")))
        relay.stdin.flush()
        reader = protocol.FrameReader()
        frames = []
        while not frames:
            data = relay.stdout.read1(65536)
            assert data, "the bootstrap closed the channel without answering"
            reader.feed(data)
            frames = reader.frames()
        assert frames == [(protocol.need_boot(), b"")]
    finally:
        relay.kill()
        agent.kill()
        relay.wait()
        agent.wait()


def test_wheel_ships_the_agent_and_the_image(tmp_path):
    root = fiddledock_magic.__file__.rsplit("/fiddledock_magic/", 1)[0]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), root], check=True)
    wheel = next(tmp_path.glob("fiddledock_magic-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for module in list(MODULES) + ["bootstrap", "relay", "__init__"]:
        assert "fiddledock_agent/%s.py" % module in names
    assert "fiddledock_magic/_image_context/Dockerfile" in names


def test_boot_payload_is_json_of_every_module():
    from fiddledock_magic._agent_files import boot_payload
    modules, payload = boot_payload()
    assert modules == list(MODULES)
    assert set(json.loads(payload)) == set(MODULES)
