"""What an instance looks like right now: the rows of `list` and of the panel.

``status`` is one of:

- ``ready``: running, its agent answered and no cell is running;
- ``busy``: running a cell (from this kernel or another one);
- ``not connected``: the container is up but this kernel is not connected to
  it, so its agent was not asked (the next cell connects to it);
- ``stopped``: the container exited cleanly (idle self-stop, ``docker stop``)
  or was never started; the next cell restarts it, without its old state;
- ``crashed``: the container died (out of memory, crashed, engine state dead).
"""

import concurrent.futures
import dataclasses
import datetime
import html
from typing import Optional

from ._errors import format_size
from ._pacing import give_way


@dataclasses.dataclass
class InstanceStatus:
    name: str
    image: str
    status: str                    # ready | busy | not connected | stopped | crashed
    started_at: Optional[datetime.datetime]
    memory_used: Optional[int]     # bytes, None when not running
    memory_limit: Optional[int]    # bytes
    cpu_percent: Optional[float]   # of one core, None when not running
    container_id: str = ""
    container_name: str = ""
    is_default: bool = False
    note: str = ""                 # why it crashed or stopped, or why a number is missing
    node: str = ""                 # the cluster node it runs on ("": one engine)

    @property
    def uptime(self) -> Optional[datetime.timedelta]:
        if self.started_at is None or self.status in ("stopped", "crashed"):
            return None
        return datetime.datetime.now(datetime.timezone.utc) - self.started_at


# --- asking the backend ----------------------------------------------------------

PROBE_THREADS = 8  # agents asked "idle?" side by side while the engine samples

# Exit codes of a container that was stopped rather than crashed: clean exit,
# SIGINT, SIGKILL and SIGTERM (docker stop).
STOP_CODES = (0, 130, 137, 143)


def stopped_status(container):
    """('stopped' or 'dead', why) for a container (``_backend.Container``) that is not running."""
    if container.node_gone:
        return "dead", "its node is gone"
    if container.oom_killed:
        return "crashed", "it ran out of memory"
    if container.state == "created":
        return "stopped", "it was never started"
    if container.state == "dead" or container.exit_code not in STOP_CODES:
        return "crashed", "it ended with exit code %s" % container.exit_code
    return "stopped", "it ended with exit code %s" % container.exit_code


def statuses(backend, named, instances, default_instance=None):
    """One InstanceStatus per ``(name, container)`` of ``named``, sorted by name.

    ``instances``: name -> Instance connected in this kernel (its agent is
    asked whether it is idle). The containers are inspected in one go, then
    the running ones sampled in one go (``Backend.stats_many``: the engine's
    stats take up to a second, the same second for all), while a few
    threads ask this kernel's agents whether they are idle.
    """
    if not named:
        return []
    infos = backend.inspect_many([container.id for _, container in named])
    running = [(name, infos[c.id]) for name, c in named
               if infos.get(c.id) is not None and infos[c.id].running]
    probed = [(name, instances[name]) for name, info in running
              if name in instances and instances[name].container_id == info.id]
    answers = {}
    if probed:
        with concurrent.futures.ThreadPoolExecutor(min(PROBE_THREADS, len(probed))) as pool:
            asked = {name: pool.submit(_probe, inst) for name, inst in probed}
            usages = _samples(backend, [info.id for _, info in running])
            answers = {name: future.result() for name, future in asked.items()}
    else:
        usages = _samples(backend, [info.id for _, info in running]) if running else {}
    rows = []
    for name, container in named:
        info = infos.get(container.id)
        if info is not None:  # None: removed while we looked
            rows.append(_row(name, info, usages.get(info.id), answers.get(name),
                             name == default_instance))
    return sorted(rows, key=lambda r: r.name)


def _probe(instance):
    """The instance's agent's answer; asked once the kernel's young cells have run."""
    give_way()
    return instance.probe()


def _samples(backend, container_ids):
    """``Backend.stats_many``, asked once more for the containers it gave an empty
    sample of: the engine sends one when reading a container's figures failed
    this time (under load, say), not only when it is stopping."""
    usages = backend.stats_many(container_ids)
    empty = [cid for cid in container_ids if getattr(usages.get(cid), "memory_used", 0) is None]
    if empty:
        usages.update(backend.stats_many(empty))
    return usages


def _row(name, info, usage, answer, is_default):
    """The InstanceStatus of ``info`` (a ``_backend.Container``); ``usage``: its
    ``Usage`` or why it has none; ``answer``: its agent's 'ready' or 'busy'
    (None: not connected in this kernel)."""
    row = InstanceStatus(
        name=name,
        image=info.labels.get("fiddledock.image") or info.image,
        status="stopped",
        started_at=info.started_at,
        memory_used=None,
        memory_limit=info.memory_limit,
        cpu_percent=None,
        container_id=info.id,
        container_name=info.name,
        is_default=is_default,
        node=info.node,
    )
    if not info.running:
        row.status, row.note = stopped_status(info)
        return row
    if isinstance(usage, Exception):  # a container stopping right now, a runtime without stats
        row.note = "no stats: %s" % str(usage).splitlines()[0][:100] if str(usage) else ""
    elif usage is not None:
        row.memory_used = usage.memory_used
        row.cpu_percent = usage.cpu_percent
        if usage.memory_used is None:
            row.note = "no stats: the engine gave no figures for it this time"
    if answer is None:
        row.status = "not connected"
        if not row.note:
            row.note = "this kernel has not used it yet; the next cell connects to it"
    else:
        row.status = answer
    return row


# --- showing rows -----------------------------------------------------------------

COLUMNS = ("name", "image", "status", "uptime", "memory", "CPU")
NODE_COLUMN = "node"  # shown when instances run on a cluster's nodes


def format_duration(delta):
    if delta is None:
        return "-"
    seconds = max(0, int(delta.total_seconds()))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return "%dd %02dh" % (days, hours)
    if hours:
        return "%dh %02dm" % (hours, minutes)
    if minutes:
        return "%dm %02ds" % (minutes, seconds)
    return "%ds" % seconds


def format_memory(row):
    limit = format_size(row.memory_limit) if row.memory_limit else "no limit"
    if row.memory_used is None:
        return "- / %s" % limit
    return "%s / %s" % (format_size(row.memory_used), limit)


def format_cpu(row):
    return "-" if row.cpu_percent is None else "%.1f%%" % row.cpu_percent


def columns(rows):
    """The table's columns: a node column when any instance runs on a cluster's node."""
    return COLUMNS + ((NODE_COLUMN,) if any(r.node for r in rows) else ())


def cells(row, with_node=False):
    name = row.name + (" *" if row.is_default else "")
    values = (name, row.image or "-", row.status, format_duration(row.uptime),
              format_memory(row), format_cpu(row))
    return values + ((row.node or "-",) if with_node else ())


def text_table(rows):
    """A plain-text table; '*' marks the default instance."""
    heads = columns(rows)
    lines = [heads] + [cells(r, len(heads) > len(COLUMNS)) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(heads))]
    out = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def html_table(rows):
    heads = columns(rows)
    head = "".join("<th style='text-align:left'>%s</th>" % c for c in heads)
    body = []
    for row in rows:
        values = [html.escape(v) for v in cells(row, len(heads) > len(COLUMNS))]
        if row.is_default:
            values[0] = "<b>%s</b>" % values[0]
        body.append("<tr>%s</tr>" % "".join("<td style='text-align:left'>%s</td>" % v
                                            for v in values))
    return ("<table class='fiddledock-list'><thead><tr>%s</tr></thead><tbody>%s</tbody></table>"
            % (head, "".join(body)))
