"""User configuration: ``%config DockerRun.<name> = value``.

Environment variables give the starting values where it makes sense, so a
deployment can set them without touching notebooks. ``%config DockerRun``
lists every setting with its help and current value. Instance settings
(image, memory, cpus, pids, disk, network, runtime, env) are checked when they
are set, so a bad value is refused at once rather than at the next cell;
they apply to instances created afterwards (``%dockerrun create`` options
override them per instance).
"""

import math
import os

from traitlets import CFloat, CInt, CUnicode, Dict, Enum, TraitError, Unicode, default, validate
from traitlets.config import Configurable

from fiddledock_agent.protocol import CELL_DISPLAY_BYTES, CELL_DISPLAYS

from ._budget import DISPLAY_BYTES_LIMIT, DISPLAY_LIMIT
from ._errors import FiddleDockError
from ._image import DEFAULT_IMAGE
from ._spec import InstanceSpec, InvalidSetting, check_name
from ._swarm_spec import check_template

MAX_POOL_SIZE = 32  # containers kept started in the background, at most


class DockerRun(Configurable):
    """Settings of the ``%%dockerrun`` magic and the instances it creates."""

    image = Unicode(help="Image for new instances (env FIDDLEDOCK_IMAGE).").tag(config=True)
    timeout = CFloat(300.0, help="Wall-clock limit of one cell in seconds; 0 means none.").tag(config=True)
    memory = Unicode("512m", help="Memory limit of a new instance (no extra swap).").tag(config=True)
    cpus = CFloat(1.0, help="CPU limit of a new instance, in cores.").tag(config=True)
    pids = CInt(256, help="Process limit of a new instance.").tag(config=True)
    disk = Unicode("256m", help="Size of each writable tmpfs (/tmp and the home folder).").tag(config=True)
    network = Unicode("none", help="Network of a new instance: none or bridge.").tag(config=True)
    runtime = Unicode("runc", help="OCI runtime of a new instance: runc or runsc (gVisor).").tag(config=True)
    env = Dict(help="Environment variables set in new instances.").tag(config=True)
    idle_timeout = CFloat(3600.0, help="An instance no client used for this many seconds stops itself.").tag(config=True)
    output_limit = CInt(4 * 1024 * 1024, help="Bytes of output kept beneath one cell; the rest is dropped with a notice.").tag(config=True)
    display_limit = CInt(DISPLAY_LIMIT, help="Outputs display() may add beneath one cell (since its last "
                                    "clear_output); the rest are dropped with a notice. At most %d."
                                    % CELL_DISPLAYS).tag(config=True)
    display_bytes_limit = CInt(DISPLAY_BYTES_LIMIT, help="Bytes of rich output (displays, their updates, "
                                                      "the cell's value) one cell may show; the rest is "
                                                      "dropped with a notice. At most %d."
                                                      % CELL_DISPLAY_BYTES).tag(config=True)
    interrupt_grace = CFloat(2.0, help="Seconds code may ignore KeyboardInterrupt before it is killed.").tag(config=True)
    transfer_limit = CUnicode("100m", help="Largest archive %dockerrun put / get moves (file contents plus 512 bytes per entry), e.g. 100m or 1g.").tag(config=True)
    pool_size = CInt(0, help="Instances with these settings kept started in the background, so a "
                             "new one is ready at once (same as %dockerrun pool N); 0 = no pool.").tag(config=True)
    parallel = CInt(8, help="Instances a cell on several instances (%%dockerrun a b c) or "
                            "%dockerrun create a b c works on at once.").tag(config=True)
    default_instance = Unicode("default", help="Instance a bare %%dockerrun uses.").tag(config=True)
    scope = Unicode(help="What instance names are scoped to; default: the notebook's path "
                         "(JPY_SESSION_NAME), else the working folder.").tag(config=True)
    backend = Enum(("docker", "swarm"), help="Where instances run: docker (the engine DOCKER_HOST "
                   "names) or swarm (a Docker Swarm cluster; DOCKER_HOST names a manager) "
                   "(env FIDDLEDOCK_BACKEND).").tag(config=True)
    node_engine = Unicode(help="Swarm only: how to reach a node's engine, a template of "
                               "{addr} (the address Swarm reports), {hostname} and {id}: "
                               "tcp://{addr}:2376, ssh://user@{hostname} or unix://...; TLS from "
                               "DOCKER_TLS_VERIFY/DOCKER_CERT_PATH (env FIDDLEDOCK_NODE_ENGINE)."
                          ).tag(config=True)

    # Set by the instance manager: checks a spec against the engine's CPUs and
    # memory, so %config refuses what no instance could get.
    capacity_check = None

    @default("image")
    def _default_image(self):
        return os.environ.get("FIDDLEDOCK_IMAGE") or DEFAULT_IMAGE

    @default("backend")
    def _default_backend(self):
        return os.environ.get("FIDDLEDOCK_BACKEND") or "docker"

    @default("node_engine")
    def _default_node_engine(self):
        return os.environ.get("FIDDLEDOCK_NODE_ENGINE") or "tcp://{addr}:2376"

    @validate("node_engine")
    def _valid_template(self, proposal):
        problem = check_template(proposal["value"])
        if problem:
            raise TraitError(problem)
        return proposal["value"]

    @default("scope")
    def _default_scope(self):
        return os.environ.get("JPY_SESSION_NAME") or os.getcwd()

    @validate("memory", "cpus", "pids", "disk", "network", "runtime", "env")
    def _valid_setting(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        spec = InstanceSpec(image="x", **{name: value})
        try:
            spec.validate()
            if self.capacity_check is not None and name in ("cpus", "memory", "disk"):
                self.capacity_check(spec, fields=(name,))
        except InvalidSetting as exc:
            raise TraitError(str(exc)) from None
        except FiddleDockError:  # no engine to ask now: checked when an instance is created
            pass
        return value

    @validate("timeout", "idle_timeout", "pool_size", "interrupt_grace", "output_limit")
    def _not_negative(self, proposal):
        if not math.isfinite(proposal["value"]):
            raise TraitError("%s must be a finite number (0 means no limit where allowed), not %r"
                             % (proposal["trait"].name, proposal["value"]))
        if proposal["value"] < 0:
            raise TraitError("%s must be 0 or more, not %r"
                             % (proposal["trait"].name, proposal["value"]))
        if proposal["trait"].name == "idle_timeout" and proposal["value"] == 0:
            raise TraitError("idle_timeout must be more than 0 seconds")
        if proposal["trait"].name == "pool_size" and proposal["value"] > MAX_POOL_SIZE:
            raise TraitError("pool_size must be at most %d, not %r"
                             % (MAX_POOL_SIZE, proposal["value"]))
        return proposal["value"]

    @validate("display_limit", "display_bytes_limit")
    def _within_agent_limits(self, proposal):
        # An agent never sends more than these for one cell (more counts as hostile).
        name, value = proposal["trait"].name, proposal["value"]
        most = CELL_DISPLAYS if name == "display_limit" else CELL_DISPLAY_BYTES
        if not 0 <= value <= most:
            raise TraitError("%s must be from 0 to %d, not %r" % (name, most, value))
        return value

    @validate("parallel")
    def _at_least_one(self, proposal):
        if proposal["value"] < 1:
            raise TraitError("parallel must be 1 or more, not %r" % proposal["value"])
        return proposal["value"]

    @validate("default_instance")
    def _valid_name(self, proposal):
        try:
            return check_name(proposal["value"])
        except InvalidSetting as exc:
            raise TraitError(str(exc)) from None
