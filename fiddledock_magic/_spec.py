"""What an instance is made of, checked, and turned into a hardened container.

``InstanceSpec`` holds an instance's settings; ``validate`` rejects bad values
with messages meant for a user; ``container_config`` makes the Docker create
arguments: safe by default (no network, no capabilities for the cell's user,
read-only root, every resource bounded; see "Container" in DEVELOPERS-NOTES.md).
"""

import dataclasses
import hashlib
import json
import re
import uuid

from ._errors import FiddleDockError, format_size

SANDBOX_UID = 1000
SANDBOX_HOME = "/home/sandbox"
AGENT_CAPS = ("SETUID", "SETGID", "KILL")  # what root in an instance may still do
AGENT_RUN = "/run/fiddledock"  # root-only folder of the agent's socket (see bootstrap.py)
NETWORKS = ("none", "bridge")
RUNTIMES = ("runc", "runsc")
POOL_HOSTNAME = "sandbox"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# Upper bounds that hold whatever the engine: the engine takes sizes and
# limits as int64 (a bigger number comes back as a Go decoding error), and no
# Linux kernel has more than 2**22 process ids.
MAX_BYTES = (1 << 63) - 1
MAX_PIDS = 1 << 22
MAX_CPUS = 256
SHM_MAX = 64 << 20  # /dev/shm: Docker's own default size, or the disk size if smaller
FILE_PAGE = 4096  # a folder holds at most one file per page of its size ...
FILES_MEMORY_SHARE = 4  # ... and per page of a quarter of the memory (each file costs ~1 KiB)
RUNSC_TASKS_PER_PID = 32  # host tasks gVisor's Sentry may need per process (a busy one: ~22)
RUNSC_TASKS = 256  # ... and for itself
MIN_FILES = 1024
CONTAINER_PREFIX = "fiddledock-"
# Pool containers: a prefix no instance's container name can have, so a pooled
# container is never mistaken for an instance (see _pool.py).
POOL_PREFIX = "fiddledock_pool-"


class InvalidSetting(FiddleDockError, ValueError):
    """A setting has a value FiddleDock cannot use; the message says why.

    ``field`` names the setting it is about ("memory", "name", ...), or None.
    """

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


def shown(value, limit=40):
    """repr(value) cut to about ``limit`` characters, for messages about user input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...%s" % text[0]


def parse_size(text, what):
    """'512m' -> bytes; a clear error for anything else, ``what`` is the setting."""
    match = SIZE_RE.match(str(text).strip())
    if not match:
        raise InvalidSetting("%s must be a size like 512m or 1g, not %s" % (what, shown(text)),
                             what)
    number, unit = match.group(1), _UNITS[match.group(2).lower()]
    # Whole numbers exactly (a float would round 2**63 down into range).
    size = int(number) * unit if number.isdigit() else int(float(number) * unit)
    if size > MAX_BYTES:
        raise InvalidSetting("%s must be less than 8 EiB (what the engine can take), not %s"
                             % (what, shown(text)), what)
    return size


def check_name(name):
    if not NAME_RE.match(name or ""):
        raise InvalidSetting(
            "instance names are 1-63 letters, digits, '_', '.' or '-', starting "
            "with a letter or digit; %s is not one" % shown(name), "name")
    return name


def scope_id(scope):
    """A short, stable id for a notebook path (or any scope string)."""
    return hashlib.sha1(scope.encode("utf-8")).hexdigest()[:8]


def container_name(instance, scope):
    """The container's name: readable in `docker ps`, unique per notebook."""
    return "%s%s-%s" % (CONTAINER_PREFIX, instance, scope_id(scope))


def instance_name(container_name_, scope):
    """The instance a container name stands for in this scope, or None.

    The container's name is the source of truth for an instance's identity:
    labels cannot change after creation, and a pooled container only gets
    its instance's name when it is taken (renamed).
    """
    cname = container_name_.lstrip("/")
    suffix = "-" + scope_id(scope)
    if not (cname.startswith(CONTAINER_PREFIX) and cname.endswith(suffix)):
        return None
    name = cname[len(CONTAINER_PREFIX):-len(suffix)]
    return name if NAME_RE.match(name) else None


def pool_container_name(scope):
    return "%s%s-%s" % (POOL_PREFIX, scope_id(scope), uuid.uuid4().hex[:10])


def is_pool_container_name(container_name_):
    return container_name_.lstrip("/").startswith(POOL_PREFIX)


def tmpfs_options(size, memory):
    """Mount options of a writable folder of size bytes: bounded in bytes and in files.

    Files count as memory, and an empty one costs ~1 KiB of it without using
    any of the folder's size: without a bound on their number, a loop creating
    empty files ends in the out-of-memory killer instead of "no space left".
    With this bound the three folders' files take at most 3/16 of the memory.
    """
    files = max(min(size, memory // FILES_MEMORY_SHARE) // FILE_PAGE, MIN_FILES)
    return "rw,nosuid,nodev,size=%d,nr_inodes=%d" % (size, files)


@dataclasses.dataclass
class InstanceSpec:
    image: str
    memory: str = "512m"
    cpus: float = 1.0
    pids: int = 256
    disk: str = "256m"
    network: str = "none"
    runtime: str = "runc"
    env: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, config, **overrides):
        """The settings of a new instance: the notebook's defaults (a DockerRun
        ``config``), each replaced by an override that is not None; ``env``
        overrides are added to the config's variables."""
        values = {field.name: getattr(config, field.name) for field in dataclasses.fields(cls)}
        values["env"] = dict(config.env)
        values["env"].update(overrides.pop("env", None) or {})
        values.update((key, value) for key, value in overrides.items() if value is not None)
        return cls(**values)

    def validate(self):
        """Check every setting against bounds that hold on any engine; self, or InvalidSetting."""
        if not self.image or not isinstance(self.image, str):
            raise InvalidSetting("an image name is required", "image")
        if parse_size(self.memory, "memory") < 16 << 20:
            raise InvalidSetting("memory must be at least 16m, not %s" % shown(self.memory),
                                 "memory")
        try:
            cpus = float(self.cpus)
        except (TypeError, ValueError, OverflowError):
            raise InvalidSetting("cpus must be a number like 1 or 0.5, not %s" % shown(self.cpus),
                                 "cpus")
        if not 0.01 <= cpus <= MAX_CPUS:  # also false for nan
            raise InvalidSetting("cpus must be between 0.01 and %d, not %s"
                                 % (MAX_CPUS, shown(self.cpus)), "cpus")
        try:
            pids = int(self.pids)
        except (TypeError, ValueError, OverflowError):
            raise InvalidSetting("pids must be a whole number, not %s" % shown(self.pids), "pids")
        if pids < 16:
            raise InvalidSetting("pids must be at least 16 (the agent needs a few), not %s"
                                 % shown(self.pids), "pids")
        if pids > MAX_PIDS:
            raise InvalidSetting("pids must be at most %d (no Linux kernel has more process "
                                 "ids), not %s" % (MAX_PIDS, shown(self.pids)), "pids")
        if parse_size(self.disk, "disk") < 1 << 20:
            raise InvalidSetting("disk must be at least 1m, not %s" % shown(self.disk), "disk")
        if self.network not in NETWORKS:
            raise InvalidSetting("network must be one of %s, not %s"
                                 % (", ".join(NETWORKS), shown(self.network)), "network")
        if self.runtime not in RUNTIMES:
            raise InvalidSetting("runtime must be one of %s, not %s"
                                 % (", ".join(RUNTIMES), shown(self.runtime)), "runtime")
        for key in self.env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise InvalidSetting("environment variable names are letters, digits "
                                     "and '_'; %s is not one" % shown(key), "env")
        self.cpus, self.pids = cpus, pids
        return self

    def check_capacity(self, cpus, memory, fields=None):
        """InvalidSetting if the limits exceed an engine with ``cpus`` cores and
        ``memory`` bytes (either None: not known); only ``fields`` if given."""
        fields = fields or ("cpus", "memory", "disk")
        if "cpus" in fields and cpus and float(self.cpus) > cpus:
            raise InvalidSetting("cpus must be at most %g (the engine's CPU count), not %s"
                                 % (cpus, shown(self.cpus)), "cpus")
        for field, why in (("memory", ""), ("disk", ": the writable folders are held in it")):
            value = getattr(self, field)
            if field in fields and memory and parse_size(value, field) > memory:
                raise InvalidSetting("%s must be at most %s (the engine's memory%s), not %s"
                                     % (field, format_size(memory), why, shown(value)), field)

    @classmethod
    def from_container(cls, container, fallback):
        """The settings a container (``_backend.Container``) was created with
        (its labels and env).

        ``fallback`` is an InstanceSpec for settings a label does not hold.
        """
        labels = container.labels
        spec = cls(
            image=labels.get("fiddledock.image") or fallback.image,
            memory=labels.get("fiddledock.memory") or fallback.memory,
            cpus=float(labels.get("fiddledock.cpus") or fallback.cpus),
            pids=int(labels.get("fiddledock.pids") or fallback.pids),
            disk=labels.get("fiddledock.disk") or fallback.disk,
            network=labels.get("fiddledock.network") or fallback.network,
            runtime=labels.get("fiddledock.runtime") or fallback.runtime,
        )
        keys = set(filter(None, labels.get("fiddledock.env_keys", "").split(",")))
        for item in container.env:
            key, _, value = item.partition("=")
            if key in keys:
                spec.env[key] = value
        return spec

    def key(self, extra=None):
        """A short hash of the settings (and ``extra``): pool containers match on it."""
        data = dataclasses.asdict(self)
        data["cpus"] = float(data["cpus"])
        data["pids"] = int(data["pids"])
        text = json.dumps([data, extra], sort_keys=True)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]

    def labels(self):
        """The settings as labels, so `list` can show them for any container."""
        return {
            "fiddledock.image": self.image,
            "fiddledock.memory": str(self.memory),
            "fiddledock.cpus": str(self.cpus),
            "fiddledock.pids": str(self.pids),
            "fiddledock.disk": str(self.disk),
            "fiddledock.network": self.network,
            "fiddledock.runtime": self.runtime,
            "fiddledock.env_keys": ",".join(sorted(self.env)),
        }

    def container_config(self, command, labels, hostname=POOL_HOSTNAME):
        """``(config, host_config)`` dicts for the Docker engine's container create.

        ``hostname``: the instance's name, so the cell's machine is named as the
        notebook names it; a pooled container, whose instance is not known
        yet, keeps the neutral POOL_HOSTNAME (a hostname cannot change later).
        """
        memory = parse_size(self.memory, "memory")
        disk = parse_size(self.disk, "disk")
        env = {
            "HOME": SANDBOX_HOME,
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MPLBACKEND": "Agg",
            "MPLCONFIGDIR": "/tmp/matplotlib",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        env.update(self.env)
        all_labels = dict(self.labels())
        all_labels.update(labels)
        config = {
            "image": self.image,
            "command": command,
            # The agent runs as root (with AGENT_CAPS only) and runs cells as
            # SANDBOX_UID, which cannot reach it.
            "user": "0:0",
            # The agent (root without DAC_OVERRIDE) may not enter the home
            # folder (0700, the sandbox user's); the worker goes there itself.
            "working_dir": "/",
            "hostname": hostname,
            "environment": env,
            "labels": all_labels,
            "stdin_open": False,  # clients come through their own exec'd relays
            "tty": False,
            "detach": True,
        }
        tmpfs_opts = tmpfs_options(disk, memory)
        host_config = {
            "network_mode": self.network,
            "cap_drop": ["ALL"],
            # Only root in the container has them (the agent, and the exec'd
            # file helpers and channel relays, which drop to the sandbox uid
            # for file access); uid 1000, the cell's, gets none.
            "cap_add": list(AGENT_CAPS),
            "security_opt": ["no-new-privileges"],
            "read_only": True,
            "tmpfs": {
                "/tmp": tmpfs_opts + ",mode=1777",
                SANDBOX_HOME: tmpfs_opts + ",mode=0700,uid=%d,gid=%d" % (SANDBOX_UID, SANDBOX_UID),
                # The agent's socket, where only root may enter: the cell's
                # user can never connect to the agent.
                AGENT_RUN: "rw,nosuid,nodev,noexec,size=65536,nr_inodes=64,mode=0700",
                # Replaces the engine's own /dev/shm, so its number of files is bounded too.
                "/dev/shm": tmpfs_options(min(disk, SHM_MAX), memory) + ",noexec,mode=1777",
            },
            # POSIX message queues: the kernel counts their bytes per uid across every
            # container and the host, so any allowance would let one instance take it
            # from the others; none at all (mq_open fails with EMFILE).
            "ulimits": [{"Name": "msgqueue", "Soft": 0, "Hard": 0}],
            "mem_limit": memory,
            "memswap_limit": memory,
            "nano_cpus": int(self.cpus * 1e9),
            "pids_limit": self.pids,
            # docker-init reaps zombies under runc; under this gVisor it made the
            # sandbox die at random (exit 2), and the agent reaps as PID 1 itself.
            "init": self.runtime == "runc",
            "log_config": {"type": "none", "config": {}},
            "ipc_mode": "private",
        }
        if self.runtime != "runc":
            host_config["runtime"] = self.runtime
        if self.runtime == "runsc":
            # The engine's pids limit counts the host tasks of gVisor's Sentry (5
            # per sleeping process of a cell, ~22 per busy one, ~40 of its own),
            # and the sandbox dies (exit 2) when it cannot make one. gVisor enforces
            # the cell's limit itself, as RLIMIT_NPROC of the cell's user (the agent,
            # root, is exempt).
            host_config["pids_limit"] = self.pids * RUNSC_TASKS_PER_PID + RUNSC_TASKS
            host_config["ulimits"].append({"Name": "nproc", "Soft": self.pids, "Hard": self.pids})
        return config, host_config
