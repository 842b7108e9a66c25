"""The instances of one scope (a notebook): find, create, restart, remove, report.

An instance's identity is its container's name, ``fiddledock-<name>-<scope8>``
(``_spec.container_name``): that is how a restarted kernel finds its
containers again, and a pooled container becomes an instance by being renamed.
The manager also reports status (``statuses``, for `list` and the panel),
cleans up, owns the pool (``_pool.Pool``) and keeps idle connections drained.
"""

import concurrent.futures
import functools
import socket
import threading

from . import _image
from ._agent_files import bootstrap_source
from ._engine import LABEL, Engine
from ._errors import AgentError, ImageNotFound, InstanceBusy, InstanceConflict, InstanceNotFound
from ._instance import Instance, client_description, describe_stop, user_name
from ._spec import (POOL_HOSTNAME, InstanceSpec, InvalidSetting, check_name, container_name,
                    instance_name, is_pool_container_name, scope_id)
from ._status import InstanceStatus, cpu_percent, memory_used, parse_time

STATUS_THREADS = 32  # stats samples take ~1 s each on the engine: run them side by side
# A status probe holds an instance's lock for a moment, a running cell
# for as long as it runs: an action waits this long before it counts the instance as busy.
CLAIM_WAIT = 0.5


def _owner():
    return "%s@%s" % (user_name(), socket.gethostname())


def _serialized(method):
    """One change to this scope's instances at a time: the panel acts from a
    background thread while the notebook runs cells."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._changes:
            return method(self, *args, **kwargs)
    return locked


class InstanceManager:
    """The instances of one scope (a notebook), created with one config.

    An instance is identified by its container's name (``_spec.container_name``
    of the instance name and the scope), never by a label: a container taken
    from the pool was created under another name and its labels cannot change.
    """

    def __init__(self, config, engine=None):
        from ._pool import Pool
        self.config = config
        self.engine = engine or Engine()
        self.instances = {}  # name -> Instance, connected in this kernel
        self.deleted = {}  # name -> how it was deleted, for the cell that makes it anew
        self._changes = threading.RLock()  # see _serialized
        self.pool = Pool(self)
        config.capacity_check = self.check_capacity
        if config.pool_size:
            self.pool.resize(config.pool_size)
        config.observe(lambda change: self.pool.resize(change["new"]), "pool_size")
        # Names mean other containers in another scope: forget this one's connections.
        config.observe(lambda change: self.disconnect_all(), "scope")
        # New default settings: the pool replaces its containers now, not at its next round.
        config.observe(lambda change: self.pool.resize(self.pool.size),
                       ["image", "memory", "cpus", "pids", "disk", "network", "runtime",
                        "env", "idle_timeout", "output_limit", "interrupt_grace", "scope"])

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

    def pool_key(self, spec):
        """What a pooled container must have been made with to serve ``spec``."""
        return spec.key({"agent": self.agent_config(), "scope": self.scope})

    def labels(self, name):
        """Labels of a new container: ours, its scope, its owner.

        ``name`` is None for a pool container (its instance is not known yet).
        """
        return {
            LABEL: "1",
            "fiddledock.instance": name or "",
            "fiddledock.scope": scope_id(self.scope),
            "fiddledock.scope_path": self.scope[-200:],
            "fiddledock.owner": _owner(),
        }

    # --- getting an instance ready ------------------------------------------
    @_serialized
    def get(self, name, image=None, notice=lambda text: None, progress=lambda line: None):
        """The instance, connected: re-attached, restarted or created as needed."""
        check_name(name)
        inst = self.instances.get(name)
        if inst is not None and inst.alive():
            if image and image != inst.image:
                raise InstanceConflict(
                    "instance %r already runs image %r, not %r; delete it or pick another name"
                    % (name, inst.image, image))
            if inst.pending_notice:
                notice(inst.pending_notice)
                inst.pending_notice = None
            return inst
        if inst is not None:
            inst.disconnect()
        info = self.engine.inspect(container_name(name, self.scope))
        if info is None:
            how = self.deleted.pop(name, None)
            if how:
                notice("instance %r was %s, so this cell runs in a new instance of that "
                       "name, with a fresh state" % (name, how))
            elif inst is not None:
                notice("instance %r was gone (removed, or the engine restarted); "
                       "created a new one: its previous state is lost" % name)
            else:  # said once, so a mistyped name does not pass unseen
                notice("created new instance %r" % name)
            self.instances.pop(name, None)
            self.create(name, self.default_spec(image), progress=progress, _absent=True)
            return self.get(name, image, notice, progress)  # tells its boot notice, if any
        old = inst
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
            if old is not None and old.container_id != inst.container_id:
                notice("instance %r was replaced by a new container (restarted or recreated "
                       "elsewhere): its previous state is lost" % name)
            text = inst.connect()
        if text:
            notice(text)
        self.instances[name] = inst
        return inst

    @_serialized
    def create(self, name, spec, progress=lambda line: None, _absent=False):
        """A new instance from spec; an error if one of that name exists.

        A ready container from the pool is used when its settings match.
        """
        check_name(name)
        spec.validate()
        self.check_runtime(spec.runtime)
        self.check_capacity(spec)
        cname = container_name(name, self.scope)
        if not _absent and self.engine.inspect(cname) is not None:
            raise InstanceConflict("instance %r already exists" % name)
        inst = self.pool.take(self.pool_key(spec), name, cname)
        if inst is None:
            self._ensure_image(spec.image, progress)
            inst = self.start_container(cname, name, spec, self.labels(name))
        self.instances[name] = inst
        self.deleted.pop(name, None)
        return inst

    def start_container(self, cname, name, spec, labels, engine=None):
        """Create, start and boot a container; an Instance connected to it."""
        engine = engine or self.engine
        config, host_config = spec.container_config(
            ["python3", "-c", bootstrap_source()], labels, hostname=name or POOL_HOSTNAME)
        cid = engine.create(cname, config, host_config)
        info = {"Id": cid, "Config": {"Labels": config["labels"], "Image": spec.image}}
        inst = Instance(self, name, info, engine=engine)
        try:
            inst.pending_notice = inst.connect(fresh=True)  # told with its first cell
        except BaseException:
            engine.remove(cid)
            raise
        inst._engine = None if engine is self.engine else engine
        return inst

    def check_runtime(self, runtime, engine=None):
        if runtime == "runc":
            return
        known = (engine or self.engine).runtimes()
        if runtime not in known:
            hint = (" (on Linux as root, scripts/ensure-engine.sh --with-runsc registers it)"
                    if runtime == "runsc" else "")
            raise InvalidSetting("runtime %r is not registered with this Docker engine, which "
                                 "has: %s%s" % (runtime, ", ".join(known), hint), "runtime")

    def check_capacity(self, spec, fields=None):
        """InvalidSetting if spec asks for more CPUs or memory than the engine has."""
        spec.check_capacity(*self.engine.capacity(), fields=fields)

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
            raise InstanceNotFound(name, [self.name_of(r) for r in self.list()])
        return info

    def list(self):
        """Container summaries of this scope's instances (pool containers left out)."""
        rows = self.engine.list({"fiddledock.scope": scope_id(self.scope)})
        return [r for r in rows if self.name_of(r) is not None]

    def name_of(self, summary):
        """The instance a container summary (or inspect data) stands for, or None."""
        names = summary.get("Names") or [summary.get("Name") or ""]
        for cname in names:
            name = instance_name(cname, self.scope)
            if name is not None:
                return name
        return None

    def names(self):
        return sorted(self.name_of(r) for r in self.list())

    # Every action acts at once: a cell running in the instance is ended, and its
    # message says what was done and by whom (``by``, e.g. "from the panel").

    def _remove(self, name, container_id, done):
        """Remove an instance's container; ``done`` ("deleted from the panel") is
        what a cell of this kernel running in it is told.

        An idle connection is closed here. A running cell keeps its own: it
        sees the stream end when the container goes, and closes it (closing a
        socket that another thread reads could hand its descriptor to the
        next connection).
        """
        inst = self.instances.pop(name, None)
        if inst is not None:
            if inst.lock.acquire(timeout=CLAIM_WAIT):
                try:
                    inst.disconnect()
                finally:
                    inst.lock.release()
            else:
                inst.ended_by = done
        self.engine.remove(container_id)

    @_serialized
    def delete(self, name, by="with %dockerrun delete"):
        info = self.find(name)
        self._remove(name, info["Id"], "deleted " + by)
        self.deleted[name] = "deleted " + by

    @_serialized
    def delete_all(self, by="with %dockerrun delete --all"):
        names = []
        for summary in self.list():
            name = self.name_of(summary)
            self._remove(name, summary["Id"], "deleted " + by)
            self.deleted[name] = "deleted " + by
            names.append(name)
        return sorted(names)

    @_serialized
    def restart(self, name, progress=lambda line: None, by="with %dockerrun restart"):
        """A new container with the same settings: state is lost."""
        info = self.find(name)
        spec = InstanceSpec.from_container(info, self.default_spec())
        self._remove(name, info["Id"], "restarted " + by)
        return self.create(name, spec, progress=progress)

    @_serialized
    def reset(self, name, by="with %dockerrun reset"):
        """A fresh namespace in the same container, now: a running cell is ended.

        Returns ``{"owner", "seconds"}`` of the cell that was ended, as the
        agent reported it, or None when none ran.
        """
        self.find(name)  # reset never creates
        done = "reset " + by
        held = self.instances.get(name)
        if held is not None and not held.lock.acquire(timeout=CLAIM_WAIT):
            return self._force_reset(held, done)  # a cell of this kernel is running
        try:  # held: no cell of this kernel can start meanwhile
            inst = self.get(name)
            try:
                inst.reset()
            except InstanceBusy:  # a cell of another kernel is running
                return self._force_reset(inst, done)
        finally:
            if held is not None:
                held.lock.release()
        return None

    def _force_reset(self, inst, done):
        """Reset over a separate connection, ending the running cell (told ``done``).

        This kernel's cell reads ``ended_by``; the agent's ``reason`` reaches a cell
        of another kernel, whose message reads "the cell was ended: <reason>; ...".
        """
        inst.ended_by = done
        reason = "instance %r was %s by %s" % (inst.name, done, client_description())
        try:
            reply = inst.control({"type": "reset", "force": True, "reason": reason})
        except BaseException:
            inst.ended_by = None  # nothing was ended
            raise
        if (reply or {}).get("type") != "ready":
            raise AgentError("instance %r did not confirm the reset (%s)"
                             % (inst.name, (reply or {}).get("type") or "no answer"))
        return reply.get("ended")

    def interrupt(self, name):
        """KeyboardInterrupt in the cell running in instance name, whoever started it.

        Returns ``{"owner", "seconds"}`` of that cell, or None if none ran.
        """
        info = self.find(name)
        if not info["State"].get("Running"):
            return None
        answer = Instance(self, name, info).control({"type": "interrupt", "force": True})
        return answer if answer.get("owner") else None

    @_serialized
    def cleanup(self, all_scopes=False):
        """Remove stopped and orphaned containers; their instance names.

        Removed: every instance container that is not running (stopped by
        its idle timeout, by hand, or dead) and every pool container that is
        stopped or whose creating kernel is gone (same host). Running
        instances stay: after a kernel restart they are re-attached. Only
        this notebook's scope unless ``all_scopes``.
        """
        from ._pool import orphaned
        labels = None if all_scopes else {"fiddledock.scope": scope_id(self.scope)}
        removed = []
        for row in self.engine.list(labels):
            cname = (row.get("Names") or ["?"])[0].lstrip("/")
            if is_pool_container_name(cname):
                if not orphaned(row):
                    continue
            elif row.get("State") == "running":
                continue
            self.engine.remove(row["Id"])
            name = self.name_of(row)
            if name is not None and self.instances.get(name) is not None \
                    and self.instances[name].container_id == row["Id"]:
                self.instances.pop(name).disconnect()
            removed.append(name or cname)
        return removed

    # --- status -----------------------------------------------------------------
    def statuses(self):
        """One InstanceStatus per instance of this scope, sorted by name.

        The engine's stats endpoint takes about a second per sample, so the
        containers are inspected, sampled and probed side by side.
        """
        rows = self.list()
        if not rows:
            return []
        workers = min(STATUS_THREADS, len(rows))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(self._status_of, rows))
        return sorted((r for r in results if r is not None), key=lambda r: r.name)

    def _status_of(self, summary):
        name = self.name_of(summary)
        info = self.engine.inspect(summary["Id"])
        if info is None:  # removed while we looked
            return None
        state = info.get("State") or {}
        labels = (info.get("Config") or {}).get("Labels") or {}
        host = info.get("HostConfig") or {}
        row = InstanceStatus(
            name=name,
            image=labels.get("fiddledock.image") or (info.get("Config") or {}).get("Image", ""),
            status="stopped",
            started_at=parse_time(state.get("StartedAt")),
            memory_used=None,
            memory_limit=host.get("Memory") or None,
            cpu_percent=None,
            container_id=info["Id"],
            container_name=info.get("Name", "").lstrip("/"),
            is_default=(name == self.config.default_instance),
        )
        if not state.get("Running"):
            row.status, row.note = _stopped_status(state)
            return row
        try:
            sample = self.engine.stats(info["Id"])
            row.memory_used = memory_used(sample)
            row.cpu_percent = cpu_percent(sample)
        except Exception as exc:  # a container stopping right now, a runtime without stats
            row.note = "no stats: %s" % str(exc).splitlines()[0][:100] if str(exc) else ""
        inst = self.instances.get(name)
        answer = None
        if inst is not None and inst.container_id == info["Id"]:
            answer = inst.probe()
        if answer is None:
            row.status = "not connected"
            if not row.note:
                row.note = "this kernel has not used it yet; the next cell connects to it"
        else:
            row.status = answer
        return row

    def disconnect_all(self):
        for inst in self.instances.values():
            inst.disconnect()
        self.instances.clear()
        self.deleted.clear()

    def close(self):
        self.pool.close()
        self.disconnect_all()


# Exit codes of a container that was stopped rather than crashed: clean exit,
# SIGINT, SIGKILL and SIGTERM (docker stop).
_STOP_CODES = (0, 130, 137, 143)


def _stopped_status(state):
    """('stopped' or 'crashed', why) for a container that is not running."""
    if state.get("OOMKilled"):
        return "crashed", "it ran out of memory"
    status = state.get("Status")
    if status == "created":
        return "stopped", "it was never started"
    if status == "dead" or state.get("ExitCode") not in _STOP_CODES:
        return "crashed", "it ended with exit code %s" % state.get("ExitCode")
    return "stopped", "it ended with exit code %s" % state.get("ExitCode")


