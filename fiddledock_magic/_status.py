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

import dataclasses
import datetime
from typing import Optional

from ._spec import format_size


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

    @property
    def uptime(self) -> Optional[datetime.timedelta]:
        if self.started_at is None or self.status in ("stopped", "crashed"):
            return None
        return datetime.datetime.now(datetime.timezone.utc) - self.started_at


# --- reading one engine sample ---------------------------------------------------

def memory_used(stats):
    """Bytes in use from a stats sample, page cache that can be dropped left out."""
    mem = (stats or {}).get("memory_stats") or {}
    usage = mem.get("usage")
    if usage is None:
        return None
    detail = mem.get("stats") or {}
    # cgroup v1 names it total_inactive_file, v2 inactive_file (as `docker stats` does)
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return max(0, int(usage) - int(inactive or 0))


def cpu_percent(stats):
    """CPU use over the sample's interval, 100 = one core (like `docker stats`)."""
    cpu = (stats or {}).get("cpu_stats") or {}
    pre = (stats or {}).get("precpu_stats") or {}
    try:
        cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    except (KeyError, TypeError):
        return None
    if system_delta <= 0 or cpu_delta < 0:
        return 0.0 if system_delta > 0 else None
    cores = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or []) or 1
    return cpu_delta / system_delta * cores * 100.0


def parse_time(text):
    """Docker's UTC timestamps ('2024-05-01T12:00:00.123456789Z'); None for the zero time."""
    if not text or text.startswith("0001-"):
        return None
    when = datetime.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
    return when.replace(tzinfo=datetime.timezone.utc)


# --- showing rows -----------------------------------------------------------------

COLUMNS = ("name", "image", "status", "uptime", "memory", "CPU")


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


def cells(row):
    name = row.name + (" *" if row.is_default else "")
    return (name, row.image or "-", row.status, format_duration(row.uptime),
            format_memory(row), format_cpu(row))


def text_table(rows):
    """A plain-text table; '*' marks the default instance."""
    lines = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def html_table(rows):
    import html
    head = "".join("<th style='text-align:left'>%s</th>" % c for c in COLUMNS)
    body = []
    for row in rows:
        values = [html.escape(v) for v in cells(row)]
        if row.is_default:
            values[0] = "<b>%s</b>" % values[0]
        body.append("<tr>%s</tr>" % "".join("<td style='text-align:left'>%s</td>" % v
                                            for v in values))
    return ("<table class='fiddledock-list'><thead><tr>%s</tr></thead><tbody>%s</tbody></table>"
            % (head, "".join(body)))
