"""Whatever a container sends, the notebook side holds: a hostile image's agent against a real kernel.

The image built here (FROM the default one) has a fake agent
(``hostile_agent.py``) as its ``python3``: it answers ``hello`` like a real agent, then misbehaves as the
cell's first line asks (floods, huge or deep headers, mistyped fields,
forged or missing ``done``). Every attack runs through a real ipykernel and
asserts what the user sees: nothing forged in the output, the limits held,
one clean error, the kernel's memory bounded, and the notebook, the
instance and the other instances still usable afterwards.
"""

import base64
import contextlib
import io
import json
import os
import tarfile
import time
import uuid

import pytest

from conftest import Kernel, _remove_scope, is_notice, notice_text, stream_text
from fiddledock_agent import protocol
from fiddledock_magic._budget import CellBudget, Flood
from fiddledock_magic._events import BadEvent, read_event

MB = 1000 * 1000
RSS_GROWTH_LIMIT = 100 * MB

HOSTILE_AGENT = os.path.join(os.path.dirname(__file__), "hostile_agent.py")


@pytest.fixture(scope="module")
def hostile_image(docker_client, default_image):
    """An image FROM the default one whose python3 is the fake agent above."""
    tag = "fiddledock-test-hostile:%s" % uuid.uuid4().hex[:8]
    with open(HOSTILE_AGENT) as f:
        script = f.read().replace("VERSION = None", "VERSION = %d" % protocol.VERSION, 1).encode()
    dockerfile = ("FROM %s\nCOPY python3 /usr/local/bin/python3\n" % default_image).encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data, mode in (("Dockerfile", dockerfile, 0o644), ("python3", script, 0o755)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    yield tag
    docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def k(docker_client, hostile_image):
    """One kernel for the module, with a real instance 'good' holding state."""
    scope = "pytest-untrusted-%s" % uuid.uuid4().hex[:8]
    kernel = Kernel(scope)
    reply, _ = kernel.execute("%%dockerrun good\nkept = 41", timeout=120)
    assert reply["status"] == "ok", reply
    yield kernel
    kernel.shutdown()
    _remove_scope(docker_client, scope)


def run(k, name, source, opts="", timeout=120):
    reply, msgs = k.execute("%%%%dockerrun %s %s\n%s" % (name, opts, source), timeout=timeout)
    return reply, [m for _, m in msgs]


def attack(k, image, source, opts="", name=None):
    """The cell in a new instance of the hostile image: (instance name, reply, iopub msgs)."""
    name = name or "h%s" % uuid.uuid4().hex[:6]
    reply, msgs = run(k, name, source, "--image %s %s" % (image, opts))
    return name, reply, msgs


def texts(msgs, name="stdout"):
    return stream_text([(0, m) for m in msgs], name)


def outputs(msgs, kind="display_data"):
    return [m["content"] for m in msgs if m["msg_type"] == kind and not is_notice(m)]


def told(msgs):
    """What the reader is told beneath the cell: stderr and FiddleDock's notices."""
    return texts(msgs, "stderr") + notice_text([(0, m) for m in msgs])


def notices(msgs):
    return notice_text([(0, m) for m in msgs]).splitlines()


def one_clean_error(reply, msgs, *words):
    """The cell failed with exactly one one-line FiddleDock error containing words."""
    assert reply["status"] == "error", reply
    errors = outputs(msgs, "error")
    assert len(errors) == 1, errors
    lines = errors[0]["traceback"]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def still_usable(k, name):
    """The attacked instance, the real one and `%dockerrun list` all work."""
    reply, msgs = run(k, name, "print('next cell', 6 * 7)")
    assert reply["status"] == "ok", (reply, told(msgs))
    assert "next cell 42" in texts(msgs)
    reply, msgs = run(k, "good", "print(kept + 1)")
    assert reply["status"] == "ok" and texts(msgs) == "42\n"
    reply, msgs = k.execute("%dockerrun list")
    assert reply["status"] == "ok"
    listing = texts([m for _, m in msgs]) + "".join(
        json.dumps(m["content"].get("data", {})) for _, m in msgs)
    assert name in listing and "good" in listing
    return msgs


def _status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no %s for pid %d" % (key, pid))


@contextlib.contextmanager
def rss_bounded(k):
    """The kernel's resident memory (its peak, too) grows less than RSS_GROWTH_LIMIT."""
    pid = k.km.provisioner.process.pid
    before = _status(pid, "VmRSS")
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")  # resets VmHWM, the peak, to the current size
    yield
    peak = _status(pid, "VmHWM")
    print("kernel RSS: %.1f MB before, peak %.1f MB" % (before / MB, peak / MB))
    assert peak - before < RSS_GROWTH_LIMIT, "kernel grew by %.0f MB" % ((peak - before) / MB)


@pytest.fixture
def limits(k):
    """Set DockerRun traits in the kernel for one test."""
    saved = []

    def _set(**values):
        for key, value in values.items():
            reply, msgs = k.execute("print(get_ipython().magics_manager.registry"
                                    "['DockerRunMagics'].config_obj.%s)" % key)
            saved.append((key, texts([m for _, m in msgs]).strip()))
            k.execute("%%config DockerRun.%s = %r" % (key, value))
    yield _set
    for key, value in reversed(saved):
        k.execute("%%config DockerRun.%s = %s" % (key, value))


# --- floods: caps hold, the agent is stopped, memory stays bounded ------------------

def test_the_memory_measurement_can_fail(k):
    with pytest.raises(AssertionError, match="kernel grew by"):
        with rss_bounded(k):
            k.execute("grown = bytearray(150_000_000)\ngrown[::4096] = b'x' * len(grown[::4096])")
    k.execute("del grown")


def test_endless_output_is_capped_then_the_container_is_stopped(k, hostile_image):
    with rss_bounded(k):
        name, reply, msgs = attack(k, hostile_image, "#stream-flood")
    one_clean_error(reply, msgs, name, "far past this cell's limits", "container was stopped",
                    "next cell starts it again")
    assert texts(msgs) == "x" * (4 << 20)  # exactly the default cap, whatever the agent sent
    limit_notices = [n for n in notices(msgs) if "output limit" in n]
    assert len(limit_notices) == 1 and "output limit of 4.0 MiB reached" in limit_notices[0]
    still_usable(k, name)


def test_a_lower_output_limit_holds_exactly(k, hostile_image, limits):
    limits(output_limit=100000)
    name, reply, msgs = attack(k, hostile_image, "#stream-flood")
    one_clean_error(reply, msgs, name, "far past this cell's limits")
    assert texts(msgs) == "x" * 100000


def test_the_next_cell_says_the_instance_was_restarted(k, hostile_image):
    name, reply, _ = attack(k, hostile_image, "#display-flood")
    assert reply["status"] == "error"
    reply, msgs = run(k, name, "print('again')")
    assert reply["status"] == "ok" and texts(msgs) == "again\n"
    assert "was not running" in told(msgs) and "restarted it" in told(msgs)


def test_endless_displays_are_capped_then_the_container_is_stopped(k, hostile_image, limits):
    limits(display_limit=50)
    with rss_bounded(k):
        name, reply, msgs = attack(k, hostile_image, "#display-flood")
    one_clean_error(reply, msgs, name, "far past this cell's limits")
    assert len(outputs(msgs)) == 50
    assert len([n for n in notices(msgs) if "display limit reached" in n]) == 1
    still_usable(k, name)


@pytest.mark.parametrize("flood, what", [("#notice-flood", "notices"),
                                         ("#junk-flood", "belong to no cell")])
def test_other_floods_stop_the_container(k, hostile_image, flood, what):
    with rss_bounded(k):
        name, reply, msgs = attack(k, hostile_image, flood)
    one_clean_error(reply, msgs, name, what, "container was stopped")
    assert "not yours" not in texts(msgs)
    assert len([n for n in notices(msgs) if "forged notice" in n]) <= protocol.CELL_NOTICES
    still_usable(k, name)


def test_a_real_display_loop_past_the_limits_is_cut_never_stopped(k, limits):
    """A real agent keeps to its own ceiling (10 000 displays a cell): dropped, not a flood."""
    limits(display_limit=5)
    reply, msgs = run(k, "good", "for i in range(10005):\n    display(i)\nkept")
    assert reply["status"] == "ok", told(msgs)
    assert [m["data"]["text/plain"] for m in outputs(msgs)] == ["0", "1", "2", "3", "4"]
    assert outputs(msgs, "execute_result") == []  # the value was the 10 006th output
    assert len([n for n in notices(msgs) if "display limit reached" in n]) == 1
    assert "display output stopped: this cell sent 10000 displays" in told(msgs)
    reply, msgs = run(k, "good", "from IPython.display import clear_output\n"
                                 "for i in range(20):\n    clear_output(wait=True)\n    display(i)")
    assert reply["status"] == "ok"  # outputs are counted since the last clear_output
    assert [m["data"]["text/plain"] for m in outputs(msgs)] == [str(i) for i in range(20)]
    assert notices(msgs) == []


# --- malformed frames: one clean error, the connection dropped, nothing poisoned ------

MALFORMED = [
    # unreadable: the rest of the stream is dropped with this kernel's own connection
    ("#huge-header", "frame too large"),
    ("#garbage", "frame too large"),

    ("#deep-json", "nested too deep"),
    ("#stream-name-list", "stream name"),
    ("#parts-not-list", "'parts' is dict"),
    ("#metadata-not-dict", "metadata is list"),
    ("#parts-lie", "parts add up to 1000 bytes"),
    ("#traceback-not-list", "traceback is not a list"),
    ("#traceback-numbers", "traceback is not a list"),
    ("#ename-number", "exception name is int"),
    ("#id-list", "cell id is list"),
    ("#bad-status", "status is not one of"),
]


@pytest.mark.parametrize("source, problem", MALFORMED, ids=[m[0][1:] for m in MALFORMED])
def test_a_malformed_frame_is_one_clean_error(k, hostile_image, source, problem):
    with rss_bounded(k):
        name, reply, msgs = attack(k, hostile_image, source)
    assert reply["ename"] == "MalformedEvent"
    line = one_clean_error(reply, msgs, "cannot read", name, problem, "next cell connects again")
    assert "forged" not in texts(msgs) and "forged" not in line
    assert outputs(msgs) == []
    still_usable(k, name)


def cpu_seconds(pid):
    """User + system CPU time a process has used so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_flood_between_cells_costs_the_idle_kernel_nothing(k, hostile_image):
    """An instance that keeps sending after its cell ended: the kernel reads none of it,
    idle or not; the next cell sees data waiting and opens a fresh connection."""
    pid = k.km.provisioner.process.pid
    with rss_bounded(k):
        name, reply, msgs = attack(k, hostile_image, "#flood-after-done")
        assert reply["status"] == "ok"
        before = cpu_seconds(pid)
        time.sleep(3)  # the kernel is idle; the instance floods
        assert cpu_seconds(pid) - before < 0.3
        msgs = still_usable(k, name)
    assert "between cells" not in texts([m for _, m in msgs])


def test_a_malformed_frame_with_no_raise_does_not_fail_the_cell(k, hostile_image):
    name, reply, msgs = attack(k, hostile_image, "#deep-json", "--no-raise")
    assert reply["status"] == "ok"
    err = told(msgs)
    assert "cannot read" in err and name in err and "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if "created new instance" not in line]
    assert len(lines) == 1, lines
    still_usable(k, name)


def test_odd_but_valid_values_are_shown_cleanly(k, hostile_image):
    """NaN, infinity, lone surrogates, JSON too deep to pass on: shown without an error."""
    name, reply, msgs = attack(k, hostile_image, "#odd-but-valid")
    assert reply["status"] == "ok", told(msgs)
    shown = outputs(msgs)
    assert shown[0]["data"]["text/plain"] == "ok"
    assert shown[0]["metadata"] == {"x": None, "y": None, "s": "?"}
    assert shown[1]["data"] == {"text/plain": "deep"}  # the JSON part was left out
    err = told(msgs)
    assert "a JSON output (200 bytes) was not shown" in err and "lone ? surrogate" in err


# --- deadline, forged done --------------------------------------------------------

def test_an_agent_that_never_ends_the_cell_is_stopped_at_the_deadline(k, hostile_image, limits):
    limits(interrupt_grace=0.5)
    name, reply, msgs = attack(k, hostile_image, "#no-done", "--timeout 1")
    one_clean_error(reply, msgs, name, "did not end", "after its 1 s time limit",
                    "container was stopped", "next cell starts it again")
    still_usable(k, name)


def test_a_forged_done_of_another_cell_does_not_end_this_one(k, hostile_image, limits):
    limits(interrupt_grace=0.5)
    name, reply, msgs = attack(k, hostile_image, "#forged-done", "--timeout 1")
    assert texts(msgs) == "after the forged done\n"  # the cell went on after it
    one_clean_error(reply, msgs, name, "did not end", "container was stopped")


# --- big outputs travel as payload; display ids belong to their instance ------------

def test_a_5_mb_png_is_shown(k, hostile_image):
    _, reply, msgs = attack(k, hostile_image, "#big-png")
    assert reply["status"] == "ok"
    png = base64.b64decode(outputs(msgs)[0]["data"]["image/png"])
    assert png.startswith(b"\x89PNG") and len(png) == 5000008


def test_a_5_mb_png_from_a_real_agent_is_shown(k):
    reply, msgs = run(k, "good", "from IPython.display import Image\n"
                                 "display(Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + bytes(5_000_000), "
                                 "format='png'))")
    assert reply["status"] == "ok", told(msgs)
    png = base64.b64decode(outputs(msgs)[0]["data"]["image/png"])
    assert png.startswith(b"\x89PNG") and len(png) == 5000008


def test_an_instance_cannot_update_another_instances_display(k, hostile_image):
    _, msgs = run(k, "good", "display('mine', display_id='shared')")
    mine = outputs(msgs)[0]["transient"]["display_id"]
    # Another real instance, and a hostile one, both aim at the same id.
    reply, msgs = run(k, "other", "from IPython.display import update_display\n"
                                  "update_display('theirs', display_id='shared')")
    assert reply["status"] == "ok"
    theirs = outputs(msgs, "update_display_data")[0]["transient"]["display_id"]
    _, reply, msgs = attack(k, hostile_image, "#update-other")
    assert reply["status"] == "ok"
    hijack = outputs(msgs, "update_display_data")[0]["transient"]["display_id"]
    assert len({mine, theirs, hijack}) == 3
    assert "good" in mine and "other" in theirs


# --- the checks on their own (no Docker) ----------------------------------------------

def test_deep_json_is_a_protocol_error_not_a_recursion_error():
    reader = protocol.FrameReader()
    head = b'{"type": "stream", "x": ' + b"[" * 200000 + b"]" * 200000 + b"}"
    reader.feed(protocol.HEADER.pack(len(head), 0) + head)
    with pytest.raises(protocol.ProtocolError, match="nested too deep"):
        reader.frames()


def test_frames_larger_than_the_limits_are_refused_before_they_are_read():
    reader = protocol.FrameReader()
    reader.feed(protocol.HEADER.pack(protocol.MAX_HEADER + 1, 0))
    with pytest.raises(protocol.ProtocolError, match="too large"):
        reader.frames()


@pytest.mark.parametrize("header, payload", [
    ({"type": "stream", "name": ["stdout"]}, b"x"),
    ({"type": 7}, b""),
    ({"type": "display", "parts": [["text/plain", -1]]}, b""),
    ({"type": "display", "parts": [], "metadata": {"fiddledock": {"display_id": 5}}}, b""),
    ({"type": "display", "parts": [], "metadata": {"fiddledock": {"update": "yes"}}}, b""),
    ({"type": "display", "parts": [], "metadata": {"a": json.loads("[" * 40 + "]" * 40)}}, b""),
    ({"type": "done", "status": "error", "error": "boom"}, b""),
    ({"type": "input_request", "prompt": {"x": 1}}, b""),
    ({"type": "notice", "text": None}, b""),
])
def test_mistyped_events_are_bad_events(header, payload):
    with pytest.raises(BadEvent):
        read_event((header, payload))


def test_the_budget_cuts_output_at_the_limit_and_then_calls_it_a_flood():
    budget = CellBudget(output_limit=10)
    event = read_event(({"type": "stream", "name": "stdout"}, b"0123456789abc"))
    assert budget.admit(event).data == b"0123456789"
    assert len(budget.take_notices()) == 1
    assert budget.admit(read_event(({"type": "stream", "name": "stdout"}, b"x"))) is None
    assert budget.take_notices() == []
    with pytest.raises(Flood):
        budget.admit(read_event(({"type": "stream", "name": "stdout"}, b"x" * (2 << 20))))
