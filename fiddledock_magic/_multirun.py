"""Several instances at once: one cell on each (``%%dockerrun alice bob carol``),
and creating several (``%dockerrun create a b c``).

Each instance's work runs in a thread of its own, at most ``DockerRun.parallel``
at once. The threads never write to the notebook (ipykernel sends only the
main thread's output to the cell): they put what their instance sends on a
queue, and the main thread draws it in that instance's section
(``_sections``), then the summary line. A cell's own options (``--timeout``,
``--reset``, ``--image``) apply to each instance; a name that does not exist
yet is created, as a one-instance cell would.

The notebook's stop button asks every instance still running the cell to
interrupt it, over a channel of its own (as ``%dockerrun interrupt`` does);
pressed again, it asks again, and the agent escalates to a kill. ``input()``
in a container is asked in the notebook, one prompt at a time, each prompt
headed by its instance's name.
"""

import concurrent.futures
import queue
import threading
import time

from ._errors import FiddleDockError, InstanceConflict, InstanceLost, InstancesFailed
from ._instance import CellHandler
from ._outcome import cell_outcome, lost_error
from ._panel_model import record_result
from ._render import _can_ask
from ._sections import STATE_WORDS, Sections

WAIT = 0.1  # s the main thread waits for an event before redrawing


def in_parallel(names, work, parallel):
    """``(name, result, error)`` of work(name) for each name, as each ends, at most
    ``parallel`` at once; error is the FiddleDockError work raised (or None)."""
    workers = max(1, min(len(names), parallel))
    with concurrent.futures.ThreadPoolExecutor(workers, "fiddledock-many") as pool:
        futures = {pool.submit(work, name): name for name in names}
        try:
            for future in concurrent.futures.as_completed(futures):
                try:
                    yield futures[future], future.result(), None
                except FiddleDockError as exc:
                    yield futures[future], None, exc
        except BaseException:  # the stop button: what has not started yet never does
            for future in futures:
                future.cancel()
            raise


def create_many(manager, names, spec, say, complain):
    """Create the named instances at once: ``say`` a line for each one made,
    ``complain`` one for each that failed (the others go on). Raises
    InstancesFailed at the end if any failed."""
    failed = []
    for name, _, error in in_parallel(names, lambda name: manager.create(name, spec),
                                      manager.config.parallel):
        if error is None:
            say("created instance %r" % name)
        else:
            failed.append(name)
            complain("instance %r was not created: %s" % (name, error))
    if failed:
        raise InstancesFailed(failed, "%d of %d instances not created: %s"
                              % (len(failed), len(names), ", ".join(sorted(failed))))


class _Forward(CellHandler):
    """A cell handler in an instance's thread: what arrives goes on the queue."""

    def __init__(self, name, events, can_ask, ended):
        self.name = name
        self.events = events
        self.can_ask = can_ask
        self.ended = ended  # set when the main thread stopped listening

    def stream(self, name, data):
        self.events.put((self.name, "stream", (name, data)))

    def display(self, data, metadata):
        self.events.put((self.name, "display", (data, metadata)))

    def result(self, data, metadata):
        self.events.put((self.name, "result", (data, metadata)))

    def notice(self, text):
        self.events.put((self.name, "notice", text))

    def ask(self, prompt, password):
        answer = queue.Queue(1)
        self.events.put((self.name, "ask", (prompt, password, answer)))
        while True:
            try:
                value, error = answer.get(timeout=WAIT)
                break
            except queue.Empty:
                if self.ended.is_set():
                    raise EOFError("the notebook stopped listening to this cell") from None
        if error is not None:
            raise error
        return value


class ManyRun:
    """One cell on several instances: the threads, the sections, the summary."""

    def __init__(self, manager, shell, names, code, timeout, image=None, reset=False,
                 cell_name=None):
        self.manager = manager
        self.shell = shell
        self.names = list(names)
        self.code = code
        self.timeout = timeout
        self.image = image
        self.reset = reset
        self.cell_name = cell_name
        self.events = queue.Queue()
        self.running = set()  # names whose cell has been sent (main thread's view)
        self.results = {}  # name -> (status, seconds)
        self.stopping = False

    def run(self):
        """Run the cell everywhere; the summary line. InstancesFailed (its text the
        summary) when any instance did not end ok."""
        known = set(self.manager.names())  # first: no engine, no sections left waiting
        self.sections = Sections(self.shell, self.names)
        can_ask = _can_ask(self.shell)
        workers = max(1, min(len(self.names), self.manager.config.parallel))
        ended = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(workers, "fiddledock-cell") as pool:
            for name in self.names:
                pool.submit(self._one, name, name not in known,
                            _Forward(name, self.events, can_ask, ended))
            try:
                while len(self.results) < len(self.names):
                    try:
                        self._step()
                    except KeyboardInterrupt:  # the stop button
                        self._interrupt()
            except BaseException:  # a failure here: stop the cells rather than wait for them
                ended.set()
                self._interrupt()
                raise
        failed = [n for n in self.names if self.results[n][0] != "ok"]
        summary = self.summary()
        if failed:
            raise InstancesFailed(failed, summary)
        return summary

    def _step(self):
        try:
            name, kind, value = self.events.get(timeout=WAIT)
        except queue.Empty:
            self.sections.refresh()
            return
        section = self.sections[name]
        if kind == "stream":
            section.stream(*value)
        elif kind == "display":
            section.display(*value)
        elif kind == "result":
            section.result(*value)
        elif kind == "notice":
            section.notice(value)
        elif kind == "start":
            section.state, section.started = "running", time.monotonic()
            self.running.add(name)
        elif kind == "ask":
            self._ask(name, *value)
        elif kind == "end":
            status, error, seconds = value
            if error is not None:
                section.error(error._render_traceback_())
            self.running.discard(name)
            self.results[name] = (status, seconds)
            record_result(self.manager, name, status, seconds)
            self.sections.end(name, status, seconds)
        self.sections.refresh()

    def _ask(self, name, prompt, password, answer):
        from ._render import getpass_prompt
        self.sections.refresh()
        try:
            asked = "[%s] %s" % (name, prompt)
            answer.put((getpass_prompt(asked) if password else input(asked), None))
        except KeyboardInterrupt:
            answer.put((None, EOFError("input() was interrupted")))
            raise
        except Exception as exc:
            answer.put((None, exc))

    def _one(self, name, new, handler):
        """An instance's thread: its cell, and at the end an ``end`` event."""
        started = time.monotonic()
        try:
            status, error = self._cell(name, new, handler)
        except Exception as exc:  # told under its instance, never lost in a thread
            status, error = "error", FiddleDockError("%s: %s" % (type(exc).__name__, exc))
        self.events.put((name, "end", (status, error, time.monotonic() - started)))

    def _cell(self, name, new, handler):
        instance = None
        if self.stopping:
            return "interrupted", FiddleDockError("stopped before it started")
        try:
            if new:
                try:
                    self.manager.create(name, self.manager.default_spec(self.image),
                                        _absent=True)  # not listed when the cell began
                    handler.notice("created new instance %r" % name)
                except InstanceConflict:  # made meanwhile (by the panel, say)
                    pass
            instance = self.manager.get(name, image=self.image, notice=handler.notice,
                                        progress=handler.notice)
            if self.stopping:
                return "interrupted", FiddleDockError("stopped before it started")
            instance.ended_by = None
            self.events.put((name, "start", None))
            config = self.manager.config
            done = instance.execute(self.code, handler, timeout=self.timeout, reset=self.reset,
                                    cell_name=self.cell_name, output_limit=config.output_limit,
                                    interrupt_grace=config.interrupt_grace)
        except InstanceLost as exc:  # the container stopped under the cell
            return "error", lost_error(exc, instance and instance.ended_by)
        except FiddleDockError as exc:
            return "error", exc
        ended_by, instance.ended_by = instance.ended_by, None
        if done.get("status") != "ok" and done.get("notice"):
            handler.notice(done["notice"])
        return cell_outcome(done, name, self.timeout, ended_by, self.shell)

    def _interrupt(self):
        """Ask each instance running the cell to stop it (from threads: the engine may be slow)."""
        self.stopping = True

        def stop(name):
            try:
                self.manager.interrupt(name)
            except FiddleDockError as exc:
                self.events.put((name, "notice", "could not interrupt: %s" % exc))
        for name in sorted(self.running):
            threading.Thread(target=stop, args=(name,), daemon=True,
                             name="fiddledock-interrupt").start()

    def summary(self):
        """'3 instances: ok: alice (0.4 s); failed: bob (0.5 s); timed out: carol (2.0 s)'."""
        groups = []
        for status in ("ok", "error", "timeout", "interrupted"):
            names = [n for n in self.names if self.results[n][0] == status]
            if names:
                groups.append("%s: %s" % (STATE_WORDS[status], ", ".join(
                    "%s (%.1f s)" % (n, self.results[n][1]) for n in names)))
        return "%d instances: %s" % (len(self.names), "; ".join(groups))
