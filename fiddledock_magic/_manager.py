"""The instances of one scope (a notebook): find, create, restart, remove, report.

An instance's identity is its container's name, ``fiddledock-<name>-<scope8>``
(``_spec.container_name``): that is how a restarted kernel finds its
containers again, and a pooled container becomes an instance by being renamed.
The manager also reports status (``statuses``, for `list` and the panel),
cleans up, owns the pool (``_pool.Pool``) and keeps idle connections drained.
It reaches containers only through its backend (``_backend.Backend``).
"""

import functools
import socket
import threading
import time

from fiddledock_agent import protocol as messages

from . import _image
from ._agent_files import bootstrap_source
from ._backend import LABEL, Container
from ._docker_backend import DockerBackend
from ._errors import (AgentError, EngineError, ImageNotFound, InstanceBusy, InstanceConflict,
                      InstanceNotFound)
from ._instance import Instance, client_description, describe_stop, user_name
from ._pool import Launcher, Pool, orphaned
from ._spec import (POOL_HOSTNAME, InstanceSpec, InvalidSetting, check_name, container_name,
                    instance_name, is_pool_container_name, pool_container_name, scope_id)
from ._status import statuses

# A status probe holds an instance's lock for a moment, a running cell
# for as long as it runs: an action waits this long before it counts the instance as busy.
CLAIM_WAIT = 0.5
# An image found on the engine is not looked up again for this long: the creates of
# one many-instance cell make one image request, not one each (one gone meanwhile:
# the create says so, and the next looks again).
IMAGE_SEEN_FOR = 10.0


def _owner():
    return "%s@%s" % (user_name(), socket.gethostname())


def agent_config(config):
    """The settings a fresh agent is booted with."""
    return {
        "idle_timeout": config.idle_timeout,
        "output_limit": config.output_limit,
        "interrupt_grace": config.interrupt_grace,
    }


def default_spec(config, image=None):
    return InstanceSpec.from_config(config, image=image or None)


def pool_key(config, spec):
    """What a pooled container must have been made with to serve ``spec``."""
    return spec.key({"agent": agent_config(config), "scope": config.scope})


def container_labels(scope, name):
    """Labels of a new container: ours, its scope, its owner.

    ``name`` is None for a pool container (its instance is not known yet).
    """
    return {
        LABEL: "1",
        "fiddledock.instance": name or "",
        "fiddledock.scope": scope_id(scope),
        "fiddledock.scope_path": scope[-200:],
        "fiddledock.owner": _owner(),
    }


def check_runtime(backend, runtime):
    if runtime == "runc":
        return
    known = backend.runtimes()
    if runtime not in known:
        raise InvalidSetting(backend.no_runtime_text(runtime, known), "runtime")


def make_backend(config):
    """The backend ``config.backend`` names, made lazily (nothing contacted yet)."""
    if config.backend == "swarm":
        from ._swarm_backend import SwarmBackend
        return SwarmBackend(config.node_engine)
    return DockerBackend()


def start_instance(backend, cname, name, spec, labels, config):
    """Create, start and boot a container named cname; an Instance connected to it.

    ``name`` is None for a pool container; ``config`` is the DockerRun whose
    agent settings and cell limits the instance gets.
    """
    command = ["python3", "-c", bootstrap_source()]
    cid = backend.create(cname, spec, command, labels, name or POOL_HOSTNAME)
    created = Container(id=cid, name=cname, labels=dict(spec.labels(), **labels),
                        state="created", image=spec.image)
    inst = Instance(backend, name, created, agent_config(config), config)
    try:
        inst.pending_notice = inst.connect(fresh=True)  # told with its first cell
    except BaseException:
        backend.remove(cid)
        raise
    return inst


class _PoolLauncher(Launcher):
    """How the pool of one scope makes its containers: the manager's config."""

    def __init__(self, config):
        self.config = config

    @property
    def scope(self):
        return scope_id(self.config.scope)

    @property
    def idle_timeout(self):
        return self.config.idle_timeout

    def wanted(self):
        spec = default_spec(self.config)
        return spec, pool_key(self.config, spec)

    def launch(self, backend, spec, labels):
        spec.validate()
        check_runtime(backend, spec.runtime)
        all_labels = container_labels(self.config.scope, None)
        all_labels.update(labels)
        return start_instance(backend, pool_container_name(self.config.scope), None, spec,
                              all_labels, self.config)


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

    def __init__(self, config, backend=None):
        self.config = config
        self.backend = backend or make_backend(config)
        self.instances = {}  # name -> Instance, connected in this kernel
        self.deleted = {}  # name -> how it was deleted, for the cell that makes it anew
        self._changes = threading.RLock()  # see _serialized
        self._creating = set()  # names whose container is being started (see create)
        self._images_seen = {}  # image -> time.monotonic() it was last found (see _ensure_image)
        self.pool = Pool(self.backend, _PoolLauncher(config))
        # Another place to run instances: this kernel's connections and pool belong to the old one.
        config.observe(lambda change: self.use_backend(make_backend(config)),
                       ["backend", "node_engine"])
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

    @_serialized
    def use_backend(self, backend):
        """Run instances through ``backend`` from now on (DockerRun.backend changed)."""
        self.pool.close()
        self.disconnect_all()
        self.backend = backend
        self.pool = Pool(backend, _PoolLauncher(self.config))
        if self.config.pool_size:
            self.pool.resize(self.config.pool_size)

    def default_spec(self, image=None):
        return default_spec(self.config, image)

    def labels(self, name):
        return container_labels(self.scope, name)

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
        info = self.backend.inspect(container_name(name, self.scope))
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
        inst = self._instance(name, info)
        if image and image != inst.image:
            raise InstanceConflict(
                "instance %r already runs image %r, not %r; delete it or pick another name"
                % (name, inst.image, image))
        if not info.running:
            notice("instance %r was not running (%s); restarted it: its previous state is lost"
                   % (name, describe_stop(info)))
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

    def create(self, name, spec, progress=lambda line: None, _absent=False):
        """A new instance from spec; an error if one of that name exists.

        A ready container from the pool is used when its settings match.
        Several creates run side by side: only the checks, the image check and
        the bookkeeping hold the lock, not a pool container's rename nor a new
        container's start and boot.
        """
        check_name(name)
        spec.validate()
        check_runtime(self.backend, spec.runtime)
        self.check_capacity(spec)
        cname = container_name(name, self.scope)
        with self._changes:
            if name in self._creating or (not _absent and self.backend.inspect(cname) is not None):
                raise InstanceConflict("instance %r already exists" % name)
            self._creating.add(name)
        try:
            inst = self.pool.take(pool_key(self.config, spec), name, cname)
            if inst is None:
                with self._changes:  # one build of a missing default image, not one per create
                    if not self._image_seen(spec.image):
                        self._ensure_image(spec.image, progress)
                inst = self._start_new(cname, name, spec, progress)
            with self._changes:
                self.instances[name] = inst
                self.deleted.pop(name, None)
        finally:
            self._creating.discard(name)
        return inst

    def _start_new(self, cname, name, spec, progress):
        """start_container for create: an image gone since it was seen is looked for
        (or built) again; a name taken meanwhile is an InstanceConflict."""
        try:
            return self.start_container(cname, name, spec, self.labels(name))
        except ImageNotFound:
            with self._changes:
                self._images_seen.pop(spec.image, None)
                self._ensure_image(spec.image, progress)
            return self.start_container(cname, name, spec, self.labels(name))
        except EngineError as exc:
            if exc.status_code == 409 and self.backend.inspect(cname) is not None:
                raise InstanceConflict("instance %r already exists" % name) from None
            raise

    def start_container(self, cname, name, spec, labels):
        """Create, start and boot a container; an Instance connected to it."""
        return start_instance(self.backend, cname, name, spec, labels, self.config)

    def _instance(self, name, container):
        """An Instance of an existing container (not connected yet)."""
        return Instance(self.backend, name, container, agent_config(self.config), self.config)

    def check_capacity(self, spec, fields=None):
        """InvalidSetting if spec asks for more CPUs or memory than the engine has."""
        spec.check_capacity(*self.backend.capacity(), fields=fields)

    def _image_seen(self, image):
        return time.monotonic() - self._images_seen.get(image, -IMAGE_SEEN_FOR) < IMAGE_SEEN_FOR

    def _ensure_image(self, image, progress):
        if not self.backend.image_exists(image):
            if image != _image.DEFAULT_IMAGE:
                raise ImageNotFound(image)
            progress("The default image %s is missing; building it once (a few minutes)..."
                     % image)
            _image.build_default_image(self.backend.images, image, progress=progress)
        self.backend.prepare_image(image, progress)
        self._images_seen[image] = time.monotonic()

    # --- managing ---------------------------------------------------------------
    def find(self, name):
        """The named instance's ``_backend.Container``, or InstanceNotFound."""
        info = self.backend.inspect(container_name(check_name(name), self.scope))
        if info is None:
            raise InstanceNotFound(name, [self.name_of(r) for r in self.list()])
        return info

    def list(self):
        """``_backend.Container`` summaries of this scope's instances (pool
        containers left out)."""
        rows = self.backend.list({"fiddledock.scope": scope_id(self.scope)})
        return [r for r in rows if self.name_of(r) is not None]

    def name_of(self, container):
        """The instance a ``_backend.Container`` stands for, or None."""
        return instance_name(container.name, self.scope)

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
        self.backend.remove(container_id)

    @_serialized
    def delete(self, name, by="with %dockerrun delete"):
        info = self.find(name)
        self._remove(name, info.id, "deleted " + by)
        self.deleted[name] = "deleted " + by

    @_serialized
    def delete_all(self, by="with %dockerrun delete --all"):
        names = []
        for summary in self.list():
            name = self.name_of(summary)
            self._remove(name, summary.id, "deleted " + by)
            self.deleted[name] = "deleted " + by
            names.append(name)
        return sorted(names)

    @_serialized
    def restart(self, name, progress=lambda line: None, by="with %dockerrun restart"):
        """A new container with the same settings: state is lost."""
        info = self.find(name)
        spec = InstanceSpec.from_container(info, self.default_spec())
        self._remove(name, info.id, "restarted " + by)
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
            reply = inst.control(messages.reset(force=True, reason=reason))
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
        if not info.running:
            return None
        answer = self._instance(name, info).control(messages.interrupt(force=True))
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
        labels = None if all_scopes else {"fiddledock.scope": scope_id(self.scope)}
        removed = []
        for row in self.backend.list(labels):
            if is_pool_container_name(row.name):
                if not orphaned(row):
                    continue
            elif row.running:
                continue
            self.backend.remove(row.id)
            name = self.name_of(row)
            if name is not None and self.instances.get(name) is not None \
                    and self.instances[name].container_id == row.id:
                self.instances.pop(name).disconnect()
            removed.append(name or row.name or "?")
        return removed

    # --- status -----------------------------------------------------------------
    def statuses(self):
        """One InstanceStatus per instance of this scope, sorted by name."""
        named = [(self.name_of(c), c) for c in self.list()]
        return statuses(self.backend, named, self.instances, self.config.default_instance)

    def disconnect_all(self):
        for inst in self.instances.values():
            inst.disconnect()
        self.instances.clear()
        self.deleted.clear()

    def close(self):
        self.pool.close()
        self.disconnect_all()
