"""The in-container agent's sources, as shipped with this package."""

import functools
import json
import pathlib

import fiddledock_agent
from fiddledock_agent import MODULES


def agent_dir():
    return pathlib.Path(fiddledock_agent.__file__).parent


@functools.lru_cache(maxsize=None)
def bootstrap_source():
    """The text run as ``python3 -c`` in the container."""
    return (agent_dir() / "bootstrap.py").read_text("utf-8")


@functools.lru_cache(maxsize=None)
def relay_source():
    """The text a client runs with docker exec to get its channel to the agent."""
    return (agent_dir() / "relay.py").read_text("utf-8")


@functools.lru_cache(maxsize=None)
def filehelper_source():
    """The text run as ``python3 -I -S -c`` in the container for put / get."""
    return (agent_dir() / "filehelper.py").read_text("utf-8")


@functools.lru_cache(maxsize=None)
def boot_payload():
    """``(module order, JSON payload of the sources)`` for the boot frame."""
    sources = {name: (agent_dir() / ("%s.py" % name)).read_text("utf-8") for name in MODULES}
    return list(MODULES), json.dumps(sources).encode("utf-8")


@functools.lru_cache(maxsize=None)
def wheelinstall_source():
    """The text run as ``python3 -I -S -c`` in the container for ``%dockerrun install``."""
    return (agent_dir() / "wheelinstall.py").read_text("utf-8")
