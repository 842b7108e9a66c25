"""Instances: named, hardened containers with a live agent, as this kernel sees them.

``Instance`` is one container plus the connection to its agent; it runs
cells and turns what the agent sends into calls on a ``CellHandler``.
``InstanceManager`` finds, creates, restarts and removes instances of one
scope (a notebook). Both own Docker only through ``Engine``.
"""

import getpass
import itertools
import os
import socket
import time

from . import _image
from ._agent_files import boot_payload, bootstrap_source
from ._engine import LABEL, Engine
from ._errors import (AgentError, FiddleDockError, ImageNotFound, InstanceBusy,
                      InstanceConflict, InstanceLost, InstanceNotFound)
from ._protocol import VERSION, AgentConnection, ConnectionClosed
from ._spec import InstanceSpec, check_name, container_name, scope_id

BOOT_TIMEOUT = 60.0  # python start under gVisor on a loaded machine can be slow


class CellHandler:
    """What an instance calls while a cell runs; the magic's renderer implements it."""

    can_ask = False  # whether ask() can get an answer from a person

    def stream(self, name, data):
        """Raw output bytes; name is 'stdout' or 'stderr'."""

    def display(self, data, metadata):
        """A MIME bundle from display() in the container."""

    def result(self, data, metadata):
        """The MIME bundle of the cell's last expression."""

    def notice(self, text):
        """Something the user should know (restarts, truncation, builds)."""

    def ask(self, prompt, password):
        """An answer for input() in the container; raise to refuse."""
        raise EOFError("no frontend can answer input()")


def _owner():
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return "%s@%s" % (user, socket.gethostname())


def describe_stop(state):
    """Why a container is not running, from its inspect State."""
    if not state:
        return "it is gone"
    if state.get("OOMKilled"):
        return "its container ran out of memory and was stopped"
    status = state.get("Status", "stopped")
    code = state.get("ExitCode")
    if status == "exited":
        return "its container had stopped (exit code %s)" % code
    return "its container is %s" % status


class Instance:
    """One instance: its container and, once connected, its agent."""

    def __init__(self, manager, name, info):
        self.manager = manager
        self.name = name
        self.container_id = info["Id"]
        labels = info.get("Config", {}).get("Labels") or {}
        self.image = labels.get("fiddledock.image") or info.get("Config", {}).get("Image")
        self.connection = None
        self._cell_ids = itertools.count(1)

    @property
    def engine(self):
        return self.manager.engine

    # --- connecting -----------------------------------------------------------
    def connect(self, fresh=False):
        """Attach to the agent; boot it if the container has just started.

        Returns a notice from the agent (e.g. a worker that died between
        cells), or None.
        """
        if self.connection is not None and not self.connection.closed:
            return None
        sock, keepalive = self.engine.attach(self.container_id)
        conn = AgentConnection(sock, keepalive)
        try:
            if fresh:
                self.engine.start(self.container_id)
                self._boot(conn)
            conn.send({"type": "hello"})
            header = self._wait(conn, ("ready", "need_boot"))
            if header["type"] == "need_boot":
                self._boot(conn)
                conn.send({"type": "hello"})
                header = self._wait(conn, ("ready",))
        except BaseException:
            conn.close()
            raise
        if header.get("version") != VERSION:
            conn.close()
            raise AgentError("instance %r runs agent protocol %s, this FiddleDock speaks %s; "
                             "restart it with %%dockerrun restart %s"
                             % (self.name, header.get("version"), VERSION, self.name))
        self.connection = conn
        return header.get("notice")

    def _boot(self, conn):
        modules, payload = boot_payload()
        conn.send({"type": "boot", "modules": modules, "config": self.manager.agent_config()},
                  payload)

    def _wait(self, conn, kinds):
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            try:
                frame = conn.recv(timeout=max(0.0, deadline - time.monotonic()))
            except ConnectionClosed:
                raise InstanceLost(self.name, self._why_dead(conn)) from None
            if frame is None:
                raise AgentError("instance %r: the agent did not answer within %d s"
                                 % (self.name, BOOT_TIMEOUT))
            if frame[0].get("type") in kinds:
                return frame[0]

    def _why_dead(self, conn=None):
        info = self.engine.inspect(self.container_id)
        reason = describe_stop(info and info.get("State"))
        detail = bytes(conn.agent_stderr).decode("utf-8", "replace").strip() if conn else ""
        if detail:
            reason += ": " + detail.splitlines()[-1][:300]
        return reason

    def disconnect(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    # --- running cells ------------------------------------------------------
    def execute(self, code, handler, timeout=0, reset=False, output_limit=None,
                interrupt_grace=None):
        """Run code; returns the agent's ``done`` header.

        A KeyboardInterrupt here (the notebook's interrupt button) becomes an
        interrupt in the container; a second one asks for a kill.
        """
        conn = self.connection
        cell_id = next(self._cell_ids)
        request = {"type": "execute", "id": cell_id, "timeout": timeout or 0,
                   "reset": bool(reset), "stdin": bool(handler.can_ask)}
        if output_limit:
            request["output_limit"] = int(output_limit)
        if interrupt_grace is not None:
            request["interrupt_grace"] = float(interrupt_grace)
        conn.send(request, code.encode("utf-8", "surrogateescape"))
        interrupts = 0
        while True:
            try:
                header, payload = conn.recv()
                if header.get("id") not in (cell_id, None):
                    continue
                kind = header.get("type")
                if kind == "stream":
                    handler.stream(header.get("name"), payload)
                elif kind == "display":
                    handler.display(header.get("data") or {}, header.get("metadata") or {})
                elif kind == "result":
                    handler.result(header.get("data") or {}, header.get("metadata") or {})
                elif kind == "notice":
                    handler.notice(header.get("text", ""))
                elif kind == "input_request":
                    self._answer(handler, header)
                elif kind == "busy":
                    raise InstanceBusy(self.name)
                elif kind == "done":
                    return header
            except KeyboardInterrupt:
                interrupts += 1
                conn.send({"type": "interrupt", "id": cell_id, "kill": interrupts > 1})
            except ConnectionClosed:
                self.disconnect()
                raise InstanceLost(self.name, self._why_dead(conn)) from None

    def _answer(self, handler, header):
        try:
            value = handler.ask(header.get("prompt", ""), bool(header.get("password")))
            reply = {"type": "input_reply", "value": str(value)}
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            reply = {"type": "input_reply", "error": "%s: %s" % (type(exc).__name__, exc)}
        self.connection.send(reply)

    def reset(self):
        """A fresh namespace in the same container."""
        conn = self.connection
        conn.send({"type": "reset"})
        header = self._wait(conn, ("ready", "busy"))
        if header["type"] == "busy":
            raise InstanceBusy(self.name)


class InstanceManager:
    """The instances of one scope (a notebook), created with one config."""

    def __init__(self, config, engine=None):
        self.config = config
        self.engine = engine or Engine()
        self.instances = {}  # name -> Instance, connected in this kernel

    @property
    def scope(self):
        return self.config.scope

    def agent_config(self):
        return {
            "idle_timeout": self.config.idle_timeout,
            "output_limit": self.config.output_limit,
            "interrupt_grace": self.config.interrupt_grace,
        }

    def default_spec(self, image=None):
        c = self.config
        return InstanceSpec(image=image or c.image, memory=c.memory, cpus=c.cpus,
                            pids=c.pids, disk=c.disk, network=c.network,
                            runtime=c.runtime, env=dict(c.env))

    def labels(self, name):
        return {
            LABEL: "1",
            "fiddledock.instance": name,
            "fiddledock.scope": scope_id(self.scope),
            "fiddledock.scope_path": self.scope[-200:],
            "fiddledock.owner": _owner(),
        }

    # --- getting an instance ready ------------------------------------------
    def get(self, name, image=None, notice=lambda text: None, progress=lambda line: None):
        """The instance, connected: re-attached, restarted or created as needed."""
        check_name(name)
        inst = self.instances.get(name)
        if inst is not None and inst.connection is not None and not inst.connection.closed:
            if image and image != inst.image:
                raise InstanceConflict(
                    "instance %r already runs image %r, not %r; delete it or pick another name"
                    % (name, inst.image, image))
            return inst
        info = self.engine.inspect(container_name(name, self.scope))
        if info is None:
            if inst is not None:
                notice("instance %r was gone (removed, or the engine restarted); "
                       "created a new one: its previous state is lost" % name)
            return self.create(name, self.default_spec(image), progress=progress)
        inst = Instance(self, name, info)
        if image and image != inst.image:
            raise InstanceConflict(
                "instance %r already runs image %r, not %r; delete it or pick another name"
                % (name, inst.image, image))
        if not info["State"].get("Running"):
            notice("instance %r was not running (%s); restarted it: its previous state is lost"
                   % (name, describe_stop(info["State"])))
            text = inst.connect(fresh=True)
        else:
            text = inst.connect()
        if text:
            notice(text)
        self.instances[name] = inst
        return inst

    def create(self, name, spec, progress=lambda line: None):
        """A new instance from spec; an error if one of that name exists."""
        check_name(name)
        spec.validate()
        cname = container_name(name, self.scope)
        if self.engine.inspect(cname) is not None:
            raise InstanceConflict("instance %r already exists" % name)
        self._ensure_image(spec.image, progress)
        config, host_config = spec.container_config(
            ["python3", "-c", bootstrap_source()], self.labels(name))
        cid = self.engine.create(cname, config, host_config)
        info = {"Id": cid, "Config": {"Labels": config["labels"], "Image": spec.image}}
        inst = Instance(self, name, info)
        try:
            inst.connect(fresh=True)
        except BaseException:
            self.engine.remove(cid)
            raise
        self.instances[name] = inst
        return inst

    def _ensure_image(self, image, progress):
        if self.engine.image_exists(image):
            return
        if image != _image.DEFAULT_IMAGE:
            raise ImageNotFound(image)
        progress("The default image %s is missing; building it once (a few minutes)..." % image)
        _image.build_default_image(self.engine.client, image, progress=progress)

    # --- managing ---------------------------------------------------------------
    def find(self, name):
        """Inspect data of the named instance's container, or InstanceNotFound."""
        info = self.engine.inspect(container_name(check_name(name), self.scope))
        if info is None:
            raise InstanceNotFound(name)
        return info

    def list(self):
        """Container summaries of this scope's instances."""
        return self.engine.list({"fiddledock.scope": scope_id(self.scope)})

    def delete(self, name):
        info = self.find(name)
        inst = self.instances.pop(name, None)
        if inst is not None:
            inst.disconnect()
        self.engine.remove(info["Id"])

    def delete_all(self):
        names = []
        for summary in self.list():
            name = summary["Labels"].get("fiddledock.instance")
            inst = self.instances.pop(name, None)
            if inst is not None:
                inst.disconnect()
            self.engine.remove(summary["Id"])
            names.append(name)
        return names

    def restart(self, name):
        """A new container with the same settings: state is lost."""
        info = self.find(name)
        labels = info["Config"]["Labels"]
        spec = InstanceSpec(
            image=labels.get("fiddledock.image", self.config.image),
            memory=labels.get("fiddledock.memory", self.config.memory),
            cpus=float(labels.get("fiddledock.cpus", self.config.cpus)),
            pids=int(labels.get("fiddledock.pids", self.config.pids)),
            disk=labels.get("fiddledock.disk", self.config.disk),
            network=labels.get("fiddledock.network", self.config.network),
            runtime=labels.get("fiddledock.runtime", self.config.runtime),
        )
        env = {}
        for item in info["Config"].get("Env") or []:
            key, _, value = item.partition("=")
            env[key] = value
        keys = set(filter(None, labels.get("fiddledock.env_keys", "").split(",")))
        spec.env = {k: v for k, v in env.items() if k in keys}
        self.delete(name)
        return self.create(name, spec)

    def reset(self, name):
        self.get(name).reset()

    def close(self):
        for inst in self.instances.values():
            inst.disconnect()
        self.instances.clear()


__all__ = ["CellHandler", "Instance", "InstanceManager", "FiddleDockError"]
