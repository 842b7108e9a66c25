"""The instance panel's state: a traitlets model, one per notebook (manager).

The ipywidgets view in ``_panel`` only links to this model; the model calls
the instance layer. It is shared with the line magic: ``default_instance`` is
linked to ``DockerRun.default_instance`` (so ``%dockerrun use`` and the
panel's "make default" are the same setting), and the rows come from
``InstanceManager.statuses()``, i.e. from the engine, so an instance created
by ``%%dockerrun`` appears here and one deleted here is gone from
``%dockerrun list``.

Threads: the kernel runs widget callbacks on its main thread between cells
(or, with JupyterLab's comms over subshells, on a subshell's thread beside a
running cell), so anything slow (stats, create, restart, reset, delete) runs
on a background thread and only sets traits here. Actions are per instance:
one at a time on each, any number on different ones (the manager serializes
their engine work); each shows on its own row, the rest of the panel stays
usable. An action acts at once: a cell running in the instance is ended and
told which action ended it (see ``InstanceManager``). Every trait change goes
through one lock, so the view's observers (which send widget updates over
comms, which is thread-safe) never interleave. Nothing in a thread prints:
outcomes and errors become ``message``; a traceback never reaches a log.
"""

import threading
import time
import weakref

from traitlets import Bool, Dict, Enum, Float, HasTraits, List, Unicode, link

from ._errors import short_error
from ._spec import InstanceSpec, InvalidSetting, check_name, parse_size

REFRESH_INTERVAL = 3.0  # seconds between refreshes while a view is on screen
FIELDS = ("name", "image", "memory", "cpus", "pids", "disk")
CONFIRMED = ("restart", "delete")  # actions that lose the instance's state ask first
BY = "from the panel"  # who acted, in the message of a cell that an action ended


def _with(mapping, key, value):
    """A copy with key set (a Dict trait notifies only on a new object)."""
    copy = dict(mapping)
    copy[key] = value
    return copy


def _without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


class PanelModel(HasTraits):
    statuses = List(help="InstanceStatus rows, sorted by name, as of the last refresh.")
    default_instance = Unicode(help="Linked to DockerRun.default_instance.")
    activities = Dict(help="Instance name -> the action under way on it, with its latest "
                           "progress.")
    message = Unicode(help="Outcome of the last action, or why it could not run.")
    message_kind = Enum(["", "info", "error"], default_value="")
    field_errors = Dict(help="Create form: field name -> what is wrong with its value.")
    confirming = Dict(help="Instance name -> the action ('restart' or 'delete') that awaits "
                           "confirmation.")
    last_created = Unicode(help="The instance the create form made last.")
    visible = Bool(False, help="A view is on screen: refresh every `interval` seconds.")
    live = Bool(True, help="Refresh periodically while visible.")
    interval = Float(REFRESH_INTERVAL)
    refreshed_at = Float(0.0, help="time.time() of the last successful refresh; 0 = never.")
    refresh_error = Unicode(help="Why the last refresh failed; '' if it worked.")

    def __init__(self, manager, shell=None, **kwargs):
        super().__init__(**kwargs)
        self.manager = manager
        self._lock = threading.RLock()          # every trait change
        self._refresh_lock = threading.Lock()   # one statuses() call at a time
        self._generation = 0                    # bumped by actions: stale refreshes are dropped
        self._actions = {}                      # instance name -> its action's thread
        self._viewers = set()
        self._forced = False
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._link = link((manager.config, "default_instance"), (self, "default_instance"))
        manager.config.observe(self._scope_changed, "scope")
        self._thread = threading.Thread(target=_refresh_loop, args=(weakref.ref(self),),
                                        name="fiddledock-panel-refresh", daemon=True)
        self._thread.start()
        self._shell = shell
        self._hook = None
        if shell is not None:
            ref = weakref.ref(self)

            def after_cell(*args):
                model = ref()
                if model is not None:
                    model.poke()  # a cell may have created or deleted an instance
            self._hook = after_cell
            shell.events.register("post_run_cell", after_cell)

    # --- state changes (any thread) ------------------------------------------------
    def _set(self, **traits):
        with self._lock:
            with self.hold_trait_notifications():
                for name, value in traits.items():
                    setattr(self, name, value)

    def _say(self, text, kind="info"):
        self._set(message=text, message_kind=kind)

    def set_visible(self, viewer, on):
        """A view reports whether it is on screen; the first one starts live refresh."""
        with self._lock:
            if on:
                self._viewers.add(viewer)
            else:
                self._viewers.discard(viewer)
            was, self.visible = self.visible, bool(self._viewers)
        if self.visible and not was:
            self.poke(force=True)

    # --- refreshing ----------------------------------------------------------------
    def refresh(self):
        """Rows from the engine now (blocks about a second: stats are sampled)."""
        with self._refresh_lock:
            generation = self._generation
            try:
                rows = self.manager.statuses()
            except Exception as exc:  # engine gone, etc.: say so in the panel
                self._set(refresh_error="cannot list instances: %s" % short_error(exc))
                return False
            with self._lock:
                if generation != self._generation:  # an action changed things meanwhile
                    self.poke(force=True)
                    return False
                # A row whose instance an action is changing stays until the action is
                # done (a restart removes the container before it makes the new one).
                names = {row.name for row in rows}
                changing = {name for name, thread in self._actions.items() if not thread.done}
                rows = list(rows) + [row for row in self.statuses
                                     if row.name in changing and row.name not in names]
                rows.sort(key=lambda row: row.name)
                names = {row.name for row in rows}
                self._set(statuses=rows, refreshed_at=time.time(), refresh_error="",
                          confirming={k: v for k, v in self.confirming.items() if k in names})
        return True

    def poke(self, force=False):
        """Refresh soon on the background thread; only if visible unless ``force``."""
        if force:
            self._forced = True
        if force or self.visible:
            self._wake.set()

    def names(self):
        return [row.name for row in self.statuses]

    def close(self):
        """Stop the refresh thread and the cell hook (the model is not used again)."""
        self._closed.set()
        self._wake.set()
        if self._hook is not None and self._shell is not None:
            try:
                self._shell.events.unregister("post_run_cell", self._hook)
            except ValueError:
                pass
            self._hook = None
        self._link.unlink()
        self.manager.config.unobserve(self._scope_changed, "scope")

    def _scope_changed(self, change):
        """Another notebook's instances: forget the rows, read them again."""
        with self._lock:
            self._generation += 1
            self._set(statuses=[], refreshed_at=0.0, confirming={})
        self.poke(force=True)

    # --- actions -----------------------------------------------------------------
    def busy(self, name=None):
        """Whether an action is under way (on instance ``name``, or on any)."""
        with self._lock:
            threads = [self._actions.get(name)] if name else list(self._actions.values())
        return any(thread is not None and thread.is_alive() for thread in threads)

    def wait(self, timeout=120):
        """Until every action under way (and its refresh) has finished; True if they have."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._actions.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def _start(self, name, label, work, done):
        """Run ``work(progress)`` on a thread; the outcome becomes the message.

        One action at a time per instance (a second click while the first
        runs is almost always a double click); other instances stay usable.
        ``work`` may return the outcome's text instead of ``done``.
        """
        with self._lock:
            if self.busy(name):
                self._say("wait until %s has finished" % self._actions[name].label, "error")
                return None
            self._generation += 1
            self._set(activities=_with(self.activities, name, label + "..."),
                      confirming=_without(self.confirming, name), message="", message_kind="")
            thread = threading.Thread(target=self._run, args=(name, label, work, done),
                                      name="fiddledock-panel-action", daemon=True)
            thread.label, thread.done = label, False
            self._actions[name] = thread
        thread.start()
        return thread

    def _running_cell(self, name):
        """Whether a cell runs in the instance (this kernel's, or another's as last seen)."""
        inst = self.manager.instances.get(name)
        if inst is not None and inst.running_cell:
            return True
        return any(row.name == name and row.status == "busy" for row in self.statuses)

    def _run(self, name, label, work, done):
        def progress(line):
            with self._lock:
                if name in self.activities:
                    self._set(activities=_with(self.activities, name, "%s: %s" % (
                        label, str(line).strip()[:200])))
        try:
            outcome = (work(progress) or done, "info")
        except Exception as exc:
            outcome = ("%s failed: %s" % (label, short_error(exc)), "error")
        with self._lock:
            self._generation += 1
            threading.current_thread().done = True
        try:
            self.refresh()
        except Exception as exc:  # e.g. a view that failed to draw: say so, don't raise
            outcome = (outcome[0] + "; the panel could not be refreshed: %s"
                       % short_error(exc), "error")
        try:  # the outcome shows together with the rows it produced
            with self._lock:
                self._set(activities=_without(self.activities, name), message=outcome[0],
                          message_kind=outcome[1])
        except Exception:
            pass  # only a view can fail here, and it shows its own error
        finally:
            with self._lock:
                if self._actions.get(name) is threading.current_thread():
                    del self._actions[name]

    def validate_create(self, name="", image="", memory="", cpus="", pids="", disk=""):
        """``(spec, errors)``: blank fields take the notebook's defaults (DockerRun)."""
        c = self.manager.config
        errors = {}
        name = (name or "").strip()
        if not name:
            errors["name"] = "an instance needs a name"
        else:
            try:
                check_name(name)
            except InvalidSetting as exc:
                errors["name"] = str(exc)
            else:
                if name in self.names():
                    errors["name"] = "an instance named %r exists already" % name
        # A blank field is None: the config's value.
        values = {"image": (image or "").strip() or None,
                  "memory": (memory or "").strip() or None,
                  "disk": (disk or "").strip() or None}
        cpus, pids = str(cpus or "").strip(), str(pids or "").strip()
        try:
            values["cpus"] = float(cpus) if cpus else None
        except ValueError:
            errors["cpus"] = "CPUs must be a number like 1 or 0.5, not %r" % cpus
        try:
            values["pids"] = int(pids) if pids else None
        except ValueError:
            errors["pids"] = "pids must be a whole number like 256, not %r" % pids
        for field in ("memory", "disk"):
            try:
                parse_size(values[field] or getattr(c, field), field)
            except InvalidSetting as exc:
                errors[field] = str(exc)
        if errors:
            return None, errors
        try:
            spec = InstanceSpec.from_config(c, **values).validate()
        except InvalidSetting as exc:  # limits out of range
            # A setting the form has no field for (network, say) is shown at the image.
            errors[exc.field if exc.field in FIELDS else "image"] = str(exc)
            return None, errors
        return spec, {}

    def create(self, name="", image="", memory="", cpus="", pids="", disk=""):
        """Validate now (messages in ``field_errors``), then create on a thread."""
        spec, errors = self.validate_create(name, image, memory, cpus, pids, disk)
        self._set(field_errors=errors, last_created="")
        if errors:
            self._say("not created: fix %s (marked in red)"
                      % ", ".join(f for f in FIELDS if f in errors), "error")
            return None
        name = name.strip()

        def work(progress):
            self.manager.create(name, spec, progress=progress)
            self._set(last_created=name)
        return self._start(name, "creating %r" % name, work, "created instance %r" % name)

    # Restart, reset and delete act at once; a cell running in the instance is ended.
    def _ending(self, name, work, done):
        """work(progress) whose outcome also says when it ended a running cell."""
        def run(progress):
            running = self._running_cell(name)
            work(progress)
            return done + ("; the cell running in it was ended" if running else "")
        return run

    def restart(self, name):
        """A new container with the same settings (asked first: use ``request``)."""
        return self._start(name, "restarting %r" % name, self._ending(
            name, lambda progress: self.manager.restart(name, progress=progress, by=BY),
            "restarted %r: a new container, its state is lost" % name), None)

    def reset(self, name):
        return self._start(name, "resetting %r" % name, self._ending(
            name, lambda progress: self.manager.reset(name, by=BY),
            "reset %r: a fresh namespace in the same container" % name), None)

    def delete(self, name):
        """Remove the instance and its container (asked first: use ``request``)."""
        def work(progress):
            self.manager.delete(name, by=BY)
            with self._lock:  # the row goes at once, not at the next refresh
                self.statuses = [row for row in self.statuses if row.name != name]
        return self._start(name, "deleting %r" % name, self._ending(
            name, work, "deleted instance %r and its container" % name), None)

    def request(self, action, name):
        """First click on restart or delete: that row asks for confirmation."""
        if action not in CONFIRMED:
            raise ValueError("only %s ask for confirmation, not %r" % (" and ".join(CONFIRMED),
                                                                       action))
        self._set(confirming=_with(self.confirming, name, action), message="", message_kind="")

    def cancel(self, name):
        self._set(confirming=_without(self.confirming, name))

    def confirm(self, name):
        """The row's "yes": run the action it asked about."""
        with self._lock:
            action = self.confirming.get(name)
            self._set(confirming=_without(self.confirming, name))
        if action is None:
            return None
        return getattr(self, action)(name)

    def make_default(self, name):
        """Instant: a bare %%dockerrun runs in ``name`` from now on."""
        try:
            check_name(name)
        except InvalidSetting as exc:
            self._say(str(exc), "error")
            return
        self._set(default_instance=name)  # the link sets DockerRun.default_instance
        self._say("default instance is now %r: a bare %%%%dockerrun runs there" % name)


def _refresh_loop(ref):
    """The background refresher; holds the model only weakly so it can go away."""
    while True:
        model = ref()
        if model is None or model._closed.is_set():
            return
        if model._forced or (model.visible and model.live):
            model._forced = False
            try:
                model.refresh()
            except Exception as exc:  # never a traceback from a thread
                model._set(refresh_error="refresh failed: %s" % short_error(exc))
        wake, interval = model._wake, max(0.5, model.interval)
        model = None
        wake.wait(interval)
        wake.clear()


_MODELS = weakref.WeakValueDictionary()  # id(manager) -> PanelModel


def model_for(manager, shell=None):
    """The notebook's one PanelModel (created on first use)."""
    model = _MODELS.get(id(manager))
    if model is None or model.manager is not manager or model._closed.is_set():
        model = PanelModel(manager, shell=shell)
        _MODELS[id(manager)] = model
    return model


def close_model_of(manager):
    """Stop the notebook's panel model, if it has one (on unloading the extension)."""
    model = _MODELS.pop(id(manager), None)
    if model is not None and model.manager is manager:
        model.close()
