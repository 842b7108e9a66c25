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

Rows can be ticked (``selected``) to restart, reset or delete several at
once: one action per instance as above, one message for all (``_panel_batch``).
``results`` holds each instance's last cell result, recorded by the magics
through ``record_result``. Even what the view shows open (a row's action
menu, a question) is a trait here, so every view of the panel agrees.
"""

import threading
import time
import weakref

from traitlets import Bool, Dict, Enum, Float, HasTraits, List, Unicode, link

from ._errors import short_error
from ._outcome import STATUSES
from ._panel_batch import Batch
from ._pacing import wait_for_a_pause
from ._panel_form import FIELDS, check_create_form
from ._spec import InvalidSetting, check_name

REFRESH_INTERVAL = 3.0  # seconds between refreshes while a view is on screen
REST_BEFORE_REFRESH = 0.5       # s without a cell before a periodic refresh...
REFRESH_AT_MOST_DEFERRED = 10.0  # ...waited for at most this long
ACTIONS = ("restart", "reset", "delete")  # on one row, or on every selected row at once
CONFIRMED = ("restart", "delete")  # actions that lose the instance's state ask first
RESULTS = STATUSES  # a cell's last result
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
    selected = List(Unicode(), help="The rows ticked to act on several at once, sorted.")
    confirming_selected = Unicode(help="The action ('restart' or 'delete') on the selected "
                                       "rows that awaits confirmation; '' if none.")
    menu = Unicode(help="The row whose action menu is open; '' if none.")
    results = Dict(help="Instance name -> its last cell's result: {'status': one of RESULTS, "
                        "'seconds': how long it ran, 'at': time.time() at its end}.")
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
        self._shell = None
        self._hook = None
        if shell is not None:
            self._follow_cells(shell)

    def _follow_cells(self, shell):
        """Refresh after each cell of ``shell`` (it may have created or deleted an instance)."""
        ref = weakref.ref(self)

        def after_cell(*args):
            model = ref()
            if model is not None:
                model.poke()
        self._shell, self._hook = shell, after_cell
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
            generation, started = self._generation, time.time()
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
                # A result recorded while the engine was read belongs to a row it has
                # not listed yet: keep it.
                results = {k: v for k, v in self.results.items()
                           if k in names or v["at"] >= started}
                selected = [n for n in self.selected if n in names]
                self._set(statuses=rows, refreshed_at=time.time(), refresh_error="",
                          confirming={k: v for k, v in self.confirming.items() if k in names},
                          selected=selected, results=results,
                          menu=self.menu if self.menu in names else "",
                          confirming_selected=self.confirming_selected if selected else "")
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
            self._set(statuses=[], refreshed_at=0.0, confirming={}, selected=[], results={},
                      menu="", confirming_selected="")
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

    def _start(self, name, label, work, done, batch=None):
        """Run ``work(progress)`` on a thread; the outcome becomes the message.

        One action at a time per instance (a second click while the first
        runs is almost always a double click); other instances stay usable.
        ``work`` may return the outcome's text instead of ``done``. Actions of
        one ``batch`` (several rows, one click) share one message at the end.
        """
        with self._lock:
            if self.busy(name):
                self._say("wait until %s has finished" % self._actions[name].label, "error")
                return None
            self._generation += 1
            self._set(activities=_with(self.activities, name, label + "..."),
                      confirming=_without(self.confirming, name), message="", message_kind="")
            thread = threading.Thread(target=self._run, args=(name, label, work, done, batch),
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

    def _run(self, name, label, work, done, batch):
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
            last = batch is None or batch.finish(name, outcome)
        if not last:  # the batch's last action refreshes and says how all went
            with self._lock:
                self._set(activities=_without(self.activities, name))
                self._forget(name)
            return
        if batch is not None:
            outcome = batch.summary()
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
                self._forget(name)

    def _forget(self, name):
        """The action on ``name`` is over (called by its own thread)."""
        if self._actions.get(name) is threading.current_thread():
            del self._actions[name]

    def validate_create(self, name="", image="", memory="", cpus="", pids="", disk=""):
        """``(spec, errors)``: blank fields take the notebook's defaults (DockerRun)."""
        return check_create_form(self.manager.config, self.names(), name=name, image=image,
                                 memory=memory, cpus=cpus, pids=pids, disk=disk)

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
    def _plan(self, action, name):
        """``(label, act, done)`` of restart, reset or delete on ``name``."""
        m = self.manager
        if action == "restart":
            return ("restarting %r" % name, lambda progress: m.restart(
                name, progress=progress, by=BY), "restarted %r: a new container, its state "
                "is lost" % name)
        if action == "reset":
            return ("resetting %r" % name, lambda progress: m.reset(name, by=BY),
                    "reset %r: a fresh namespace in the same container" % name)
        if action == "delete":
            def act(progress):
                m.delete(name, by=BY)
                with self._lock:  # the row goes at once, not at the next refresh
                    self._set(statuses=[row for row in self.statuses if row.name != name],
                              selected=[n for n in self.selected if n != name],
                              results=_without(self.results, name))
            return "deleting %r" % name, act, "deleted instance %r and its container" % name
        raise ValueError("no action %r: only %s" % (action, ", ".join(ACTIONS)))

    def _act(self, action, name, batch=None):
        """Start ``action`` on ``name``; its outcome also says when it ended a running cell."""
        label, act, done = self._plan(action, name)

        def work(progress):
            running = self._running_cell(name)
            act(progress)
            if running and batch is not None:
                batch.ended.append(name)
            return done + ("; the cell running in it was ended" if running else "")
        return self._start(name, label, work, None, batch)

    def restart(self, name):
        """A new container with the same settings (asked first: use ``request``)."""
        return self._act("restart", name)

    def reset(self, name):
        return self._act("reset", name)

    def delete(self, name):
        """Remove the instance and its container (asked first: use ``request``)."""
        return self._act("delete", name)

    def act_on(self, action, names):
        """Restart, reset or delete every instance in ``names`` (no question asked).

        Each row shows its own progress; one message sums up when the last is
        done. An instance with an action under way already is skipped.
        """
        self._plan(action, "")  # an unknown action fails here, before anything starts
        names = sorted(set(names))
        if not names:
            self._say("no instances selected", "error")
            return None
        with self._lock:
            skipped = [(name, "wait until %s has finished" % self._actions[name].label)
                       for name in names if self.busy(name)]
            batch = Batch(action, [name for name in names
                                    if name not in dict(skipped)], skipped)
            if not batch.pending:
                self._say(*batch.summary())
                return batch
            for name in sorted(batch.pending):
                self._act(action, name, batch)
        return batch

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

    # --- several rows at once ------------------------------------------------------
    def select(self, name, on=True):
        """Tick (or untick) a row; acting on the selection acts on every ticked row."""
        with self._lock:
            names = set(self.selected) | {name} if on else set(self.selected) - {name}
            if name not in self.names():
                names.discard(name)
            self._set(selected=sorted(names))
            if not self.selected:
                self._set(confirming_selected="")

    def select_all(self, on=True):
        with self._lock:
            self._set(selected=sorted(self.names()) if on else [])
            if not self.selected:
                self._set(confirming_selected="")

    def act_on_selected(self, action):
        """Reset acts at once; restart and delete ask first (``confirm_selected``)."""
        self._plan(action, "")  # an unknown action fails here
        if not self.selected:
            self._say("no instances selected: tick the rows to act on", "error")
            return None
        if action in CONFIRMED:
            self._set(confirming_selected=action, message="", message_kind="")
            return None
        return self.act_on(action, self.selected)

    def confirm_selected(self):
        """The selection's "yes": the action it asked about, on the rows ticked now."""
        with self._lock:
            action, names = self.confirming_selected, list(self.selected)
            self._set(confirming_selected="")
        return self.act_on(action, names) if action else None

    def cancel_selected(self):
        self._set(confirming_selected="")

    # --- the view's own state ------------------------------------------------------
    def toggle_menu(self, name):
        """Open a row's action menu (closing any other), or close it if open."""
        with self._lock:
            self._set(menu="" if self.menu == name else name)

    # --- the last cell of each instance --------------------------------------------
    def record_result(self, name, status, seconds):
        """The instance's last cell ended now with ``status`` after ``seconds``."""
        if status not in RESULTS:
            raise ValueError("a cell's result is one of %s, not %r" % (", ".join(RESULTS),
                                                                      status))
        result = {"status": status, "seconds": max(0.0, float(seconds)), "at": time.time()}
        with self._lock:
            self._set(results=_with(self.results, name, result))


def _refresh_loop(ref):
    """The background refresher; holds the model only weakly so it can go away."""
    while True:
        model = ref()
        if model is None or model._closed.is_set():
            return
        if not model._forced and model.visible and model.live:
            # Engine and kernel time go to cells first: a hundred rows' stats
            # keep the engine busy for a moment that a warm cell would feel.
            wait_for_a_pause(REST_BEFORE_REFRESH, REFRESH_AT_MOST_DEFERRED)
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
    elif shell is not None and model._shell is None:
        model._follow_cells(shell)
    return model


def record_result(manager, name, status, seconds):
    """A cell in instance ``name`` ended with ``status`` (one of RESULTS) after ``seconds``:
    the panel's last-result column shows it (in a panel opened later too)."""
    model_for(manager).record_result(name, status, seconds)


def close_model_of(manager):
    """Stop the notebook's panel model, if it has one (on unloading the extension)."""
    model = _MODELS.pop(id(manager), None)
    if model is not None and model.manager is manager:
        model.close()
