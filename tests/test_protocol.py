"""The protocol's documented catalogue and its constructors cannot drift apart.

Every message type the catalogue in ``fiddledock_agent/protocol.py`` names has
one constructor there, every constructor builds a type the catalogue names,
and what each builds is a frame the other side reads back unchanged. (That
the bootstrap's own need_boot is the catalogue's: ``test_package.py``.)
"""

import re

import pytest

from fiddledock_agent import protocol

SECTIONS = ("Requests (client -> agent)", "Events (agent -> client)")

# Arguments for each constructor: a constructor added without a line here fails.
SAMPLES = {
    "boot": (["protocol", "supervisor"], {"idle_timeout": 60}),
    "hello": ("kernel 1 on host",),
    "execute": (1, 10, False, True, "In[5]", 2, 1024, 2.0),
    "interrupt": (1, True),
    "input_reply": ("typed",),
    "reset": (True, "instance 'a' was restarted"),
    "shutdown": (),
    "need_boot": (),
    "ready": (False, 42, None),
    "busy": ("kernel 2 on host", 3.5),
    "interrupted": ("kernel 2 on host", 3.5),
    "stream": ("stdout",),
    "display": ([["text/plain", 2]], {}),
    "result": ([["text/plain", 2]], {}),
    "input_request": ("name? ", False),
    "notice": ("output limit of 4.0 MiB reached",),
    "done": ("killed", None, "exited with status 3", "timeout", True),
}


def catalogue():
    """{section title: [message types]} as protocol.py's docstring documents them."""
    doc = protocol.__doc__
    found = {}
    for title in SECTIONS:
        assert title in doc, title
        section = doc.split(title, 1)[1].split("\n\n", 1)[0]
        found[title] = re.findall(r"^``(\w+)``", section, re.MULTILINE)
    return found


def test_the_catalogue_is_read_from_the_docstring():
    found = catalogue()
    assert "execute" in found[SECTIONS[0]] and "done" in found[SECTIONS[1]]
    assert len(found[SECTIONS[0]]) >= 7 and len(found[SECTIONS[1]]) >= 10


def test_every_documented_message_has_a_constructor_and_no_other_has():
    documented = [kind for kinds in catalogue().values() for kind in kinds]
    assert len(documented) == len(set(documented)), "a type is documented twice"
    assert sorted(protocol.MESSAGES) == sorted(documented)


@pytest.mark.parametrize("kind", sorted(protocol.MESSAGES))
def test_each_constructor_builds_its_own_type_and_survives_the_wire(kind):
    header = protocol.MESSAGES[kind](*SAMPLES[kind])
    assert header["type"] == kind
    reader = protocol.FrameReader()
    reader.feed(protocol.encode(header, b"ok"))
    assert reader.frames() == [(header, b"ok")]


def test_optional_fields_are_sent_only_when_given():
    assert protocol.hello("k") == {"type": "hello", "who": "k"}
    assert protocol.hello("k", passive=True)["passive"] is True
    assert protocol.interrupt(force=True) == {"type": "interrupt", "force": True}
    assert protocol.interrupted() == {"type": "interrupted", "owner": None}
    assert "ended" not in protocol.ready(False, 1, None)
    assert protocol.ready(False, 1, None, ended=None)["ended"] is None
    assert protocol.done("ok") == {"type": "done", "status": "ok"}
    assert protocol.input_reply(error="no") == {"type": "input_reply", "error": "no"}
