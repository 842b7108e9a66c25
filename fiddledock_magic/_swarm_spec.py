"""An instance as a Docker Swarm service: the service spec, and what its tasks say.

Pure data (Swarm's API JSON as dicts), no engine: ``_swarm_backend`` sends
and reads it. The hardening is the Docker backend's (``InstanceSpec.
container_config``), carried over what the service API (1.41) offers:

- the writable folders are ``local`` volumes of type tmpfs, not tmpfs mounts:
  a service's tmpfs mount takes only a size and a mode, and is ``noexec``
  with root as owner, so the home folder would not be the sandbox user's and
  files would be bounded by bytes only. A volume takes the same mount options
  as the Docker backend's tmpfs (``nr_inodes``, ``uid``, ``mode``);
- no ``no-new-privileges`` (the agent sets PR_SET_NO_NEW_PRIVS itself before
  the worker exists) and no ``MemorySwap`` (the engine allows swap up to the
  memory limit again, on nodes that have swap);
- no runtime: ``runsc`` is a placement constraint on nodes labelled
  ``fiddledock.runtime=runsc`` (whose engine runs it as default runtime),
  and other instances keep off those nodes.
"""

from ._spec import AGENT_CAPS, AGENT_RUN, SANDBOX_HOME, SANDBOX_UID, SHM_MAX, parse_size, \
    tmpfs_options

RUNTIME_LABEL = "fiddledock.runtime"  # node label: the runtime the node's engine runs
NAME_LABEL = "fiddledock.name"  # service label: the instance's container name (renamable)
VOLUME_LABEL = "fiddledock.volume"  # the writable folders' volumes, for removal on the node
# Set although unused: an update (a rename) fills in what a spec leaves out, and
# any change to the task template would replace the task (and lose its state).
STOP_GRACE = 1000000000  # ns
RESTART_DELAY = 5000000000  # ns, the engine's default
# Task states before "running", and those a task never leaves (Swarm's task lifecycle).
STARTING = ("new", "allocated", "pending", "assigned", "accepted", "preparing", "ready",
            "starting")
ENDED = ("complete", "shutdown", "failed", "rejected", "remove", "orphaned")


def constraints(runtime, avoid_nodes=()):
    """Placement constraints: the runtime's nodes, and none of ``avoid_nodes`` (ids)."""
    if runtime == "runc":
        rules = ["node.labels.%s!=runsc" % RUNTIME_LABEL]
    else:
        rules = ["node.labels.%s==%s" % (RUNTIME_LABEL, runtime)]
    return rules + ["node.id!=%s" % node for node in sorted(avoid_nodes)]


def _folder(target, options):
    """A writable folder: a local tmpfs volume with Docker's tmpfs mount ``options``."""
    return {"Type": "volume", "Target": target,
            "VolumeOptions": {"Labels": {VOLUME_LABEL: "1"}, "DriverConfig": {
                "Name": "local",
                "Options": {"type": "tmpfs", "device": "tmpfs", "o": options}}}}


def task_template(spec, command, labels, hostname, image_id, network_id, avoid_nodes=()):
    """The service's TaskTemplate for an ``InstanceSpec``, hardened as a container is.

    ``image_id``: the image's id (``sha256:...``): a node then never tries a
    registry (there may be none) and runs exactly the image the manager has.
    """
    config, host = spec.container_config(command, labels, hostname=hostname)
    memory = parse_size(spec.memory, "memory")
    disk = parse_size(spec.disk, "disk")
    home = "%s,mode=0700,uid=%d,gid=%d" % (tmpfs_options(disk, memory), SANDBOX_UID, SANDBOX_UID)
    container = {
        "Image": image_id,
        "Command": config["command"],
        "Hostname": config["hostname"],
        "Env": ["%s=%s" % item for item in sorted(config["environment"].items())],
        "Dir": config["working_dir"],
        "User": config["user"],
        "Labels": config["labels"],
        "ReadOnly": host["read_only"],
        "Init": host["init"],
        "CapabilityDrop": ["ALL"],
        "CapabilityAdd": ["CAP_%s" % cap for cap in AGENT_CAPS],
        "Ulimits": host["ulimits"],
        "OpenStdin": False,
        "TTY": False,
        # Removal stops the task: at once, as the Docker backend removes by force.
        "StopGracePeriod": STOP_GRACE,
        "Mounts": [
            _folder("/tmp", tmpfs_options(disk, memory) + ",mode=1777"),
            _folder(SANDBOX_HOME, home),
            _folder(AGENT_RUN, "rw,nosuid,nodev,noexec,size=65536,nr_inodes=64,mode=0700"),
            _folder("/dev/shm", tmpfs_options(min(disk, SHM_MAX), memory)
                    + ",noexec,mode=1777"),
        ],
    }
    if spec.network == "none":
        # The embedded resolver forwards to this: nowhere.
        container["DNSConfig"] = {"Nameservers": ["127.0.0.1"]}
    cpus = int(spec.cpus * 1e9)
    return {
        "ContainerSpec": container,
        "Resources": {
            "Limits": {"NanoCPUs": cpus, "MemoryBytes": memory, "Pids": host["pids_limit"]},
            "Reservations": {"NanoCPUs": cpus, "MemoryBytes": memory},
        },
        "RestartPolicy": {"Condition": "none", "Delay": RESTART_DELAY, "MaxAttempts": 0},
        "Placement": {"Constraints": constraints(spec.runtime, avoid_nodes)},
        "LogDriver": {"Name": "none"},
        "Networks": [{"Target": network_id}],
    }


# --- what the manager says about tasks and nodes ------------------------------------

def _created_key(task):
    """A task's creation time as a sortable string (Go trims a fraction's zeros)."""
    text = (task.get("CreatedAt") or "").rstrip("Z")
    whole, _, fraction = text.partition(".")
    return whole + "." + fraction.ljust(9, "0")


def current_task(tasks):
    """The newest of a service's tasks (one replica: the one that counts), or None."""
    return max(tasks, key=_created_key) if tasks else None


def task_state(task):
    """``(state, exit code, error)`` of a task; state as a ``Container``'s."""
    if task is None:
        return "created", None, ""
    status = task.get("Status") or {}
    state = status.get("State") or ""
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    error = status.get("Err") or ""
    if state == "running":
        return "running", None, error
    if state in ENDED:
        return ("exited" if state in ("complete", "failed", "shutdown") else "dead"), code, error
    return "created", None, error


def task_container(task):
    """The id of a task's container, or None before it has one."""
    status = (task or {}).get("Status") or {}
    return (status.get("ContainerStatus") or {}).get("ContainerID") or None


def node_label(node):
    """How a node is shown: its hostname and the address Swarm reports for it."""
    description = node.get("Description") or {}
    hostname = description.get("Hostname") or node.get("ID", "")[:12]
    return "%s (%s)" % (hostname, (node.get("Status") or {}).get("Addr") or "?")


def node_ready(node):
    return ((node.get("Status") or {}).get("State") == "ready"
            and (node.get("Spec") or {}).get("Availability", "active") == "active")


def node_engine_url(template, node):
    """The node's engine address from the ``DockerRun.node_engine`` template."""
    return template.format(addr=(node.get("Status") or {}).get("Addr") or "",
                           hostname=(node.get("Description") or {}).get("Hostname") or "",
                           id=node.get("ID") or "")


def check_template(template):
    """A ``node_engine`` template's error, or None: a scheme and only known fields."""
    try:
        url = template.format(addr="10.0.0.1", hostname="host", id="abc")
    except (KeyError, IndexError, ValueError) as exc:
        return ("node_engine may use only {addr}, {hostname} and {id}, not %s"
                % str(exc)[:60])
    if not url.startswith(("tcp://", "ssh://", "unix://", "http://", "https://")):
        return "node_engine must start with tcp://, ssh:// or unix://, not %r" % template[:60]
    return None

