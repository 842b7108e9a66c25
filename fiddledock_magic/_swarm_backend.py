"""A Docker Swarm cluster behind the backend interface (``_backend.Backend``).

``DOCKER_HOST`` names a manager. Each instance is a one-replica service
(restart condition none) with an internal overlay network of its own; Swarm
places its task on a node (reservations = the instance's memory and CPUs).
The handle the rest of the package sees is the service's id. Its container
is found through the task and reached through that node's engine
(``DockerRun.node_engine``, a template of the node's address), a
``DockerBackend`` per node: channels, files, stats and kill go there exactly
as with one engine. The service spec is ``_swarm_spec``'s.

Images reach the nodes as ``_swarm_images`` says (a registry's image pulled
by the nodes, any other copied from the manager's engine).

Services cannot be renamed: the instance's container name is the service
label ``fiddledock.name`` (updated when the pool hands one out); the
service's own name is only a readable, valid one.
"""

import re
import threading
import time
import uuid

import docker
import docker.errors
from docker.utils import kwargs_from_env

from ._backend import LABEL, PING_TIMEOUT, Backend, Container
from ._docker_backend import (CHANGE_TIMEOUT, MAX_CONNECTIONS, QUICK_TIMEOUT, DockerBackend,
                              engine_address)
from ._errors import EngineError, EngineUnavailable, FiddleDockError, short_error
from ._spec import InvalidSetting
from ._swarm_images import ClusterImages, registry_of
from ._swarm_spec import (NAME_LABEL, RUNTIME_LABEL, VOLUME_LABEL, current_task,
                          node_engine_url, node_label, node_ready, task_container, task_state,
                          task_template)

DEFAULT_NODE_ENGINE = "tcp://{addr}:2376"
START_TIMEOUT = 120.0  # s for a task to be placed and started (an image copy included)
UNPLACED_GRACE = 3.0  # s a task may wait "pending" with a scheduling error before we say so
POLL = 0.05  # s between looks at a starting task
LOST_MEMORY = 120.0  # s new tasks keep off a node found gone (the manager notices by then)
IMAGE_COPIES = 3  # nodes one start may copy the image to before it gives up


def _service_name(name):
    """A valid, unique service name for a container name (Swarm's names are DNS labels)."""
    return "%s-%s" % (re.sub(r"[^A-Za-z0-9-]+", "-", name)[:50].strip("-"), uuid.uuid4().hex[:8])


def _node_client(url, version):
    """A docker-py client of one node's engine; TLS from the environment, as ``from_env``."""
    try:
        tls = kwargs_from_env().get("tls") if not url.startswith(("unix://", "ssh://")) else None
        client = docker.DockerClient(base_url=url, version=version, tls=tls or False,
                                     timeout=QUICK_TIMEOUT, max_pool_size=MAX_CONNECTIONS)
    except docker.errors.DockerException as exc:
        raise EngineUnavailable("cannot use the node engine %s (%s); check DockerRun.node_engine"
                                % (url, short_error(exc))) from None
    if tls:
        # requests lets REQUESTS_CA_BUNDLE (often set machine-wide) override the
        # client's own CA: the node's certificate would be checked against the
        # wrong authorities. Nothing else of the environment applies to an engine.
        client.api.trust_env = False
    return client


def _check_plain_http(engine, url):
    """A node engine that wants TLS, asked without: say how to set TLS up (its own
    answer, a 400, would otherwise surface as whatever request came first)."""
    if url.startswith(("unix://", "ssh://")) or kwargs_from_env().get("tls"):
        return
    try:
        engine.ping()
    except FiddleDockError as exc:
        if "HTTP request to an HTTPS server" in str(exc):
            raise EngineUnavailable(
                "the node engine %s wants TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH "
                "(the folder with ca.pem, cert.pem and key.pem) for the notebook" % url) from None


class SwarmBackend(ClusterImages, Backend):
    """A Swarm cluster: the manager at DOCKER_HOST and every node's engine."""

    def __init__(self, node_engine=DEFAULT_NODE_ENGINE, manager=None, _shared=None):
        self.node_engine = node_engine
        self.manager = manager or DockerBackend()
        self._engines = {}  # node engine url -> DockerBackend
        self._placed = {}  # service id -> (node engine, container id, node) of its running task
        # What every clone learns about the cluster: nodes found gone (id -> when),
        # images known on a node ((node id, image id)) and the copies under way
        # ((node id, image id) -> lock: instances started at once copy once).
        self._lost, self._images_on, self._copies = _shared or ({}, set(), {})
        self._lock = threading.Lock()
        # The progress lines of the create running in this thread (``prepare_image``
        # is told them; a copy ``start`` finds needed tells them too).
        self._told = threading.local()

    def clone(self):
        return SwarmBackend(self.node_engine, self.manager.clone(),
                            (self._lost, self._images_on, self._copies))

    def _call(self, method, *args, within=QUICK_TIMEOUT, **kwargs):
        """A call on the manager's API (docker-py's method by name)."""
        return self.manager.call(getattr(self.manager.api, method), *args, within=within,
                                 **kwargs)

    # --- the cluster --------------------------------------------------------------
    def ping(self, within=PING_TIMEOUT):
        self.manager.ping(within)
        swarm = self.manager.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise EngineUnavailable(
                "DockerRun.backend is 'swarm', but the Docker engine at %s is not a Swarm "
                "manager (its swarm state: %s); point DOCKER_HOST at a manager"
                % (engine_address(), swarm.get("LocalNodeState") or "inactive"))

    def _nodes(self):
        return self._call("nodes")

    def runtimes(self):
        found = {"runc"}
        for node in self._nodes():
            runtime = ((node.get("Spec") or {}).get("Labels") or {}).get(RUNTIME_LABEL)
            if runtime and node_ready(node):
                found.add(runtime)
        return sorted(found)

    def no_runtime_text(self, runtime, known):
        return ("runtime %r needs a Swarm node whose engine runs it as its default runtime, "
                "labelled %s=%s; no ready node of this cluster is (label one with `docker node "
                "update --label-add %s=%s NODE`)" % (runtime, RUNTIME_LABEL, runtime,
                                                     RUNTIME_LABEL, runtime))

    def capacity(self):
        """The largest ready node's CPUs and memory (one instance runs on one node)."""
        sizes = [(node.get("Description") or {}).get("Resources") or {}
                 for node in self._nodes() if node_ready(node)]
        if not sizes:
            return None, None
        return (max(s.get("NanoCPUs", 0) for s in sizes) / 1e9 or None,
                max(s.get("MemoryBytes", 0) for s in sizes) or None)

    def _engine(self, node):
        """The ``DockerBackend`` of a node's engine (one per address, kept)."""
        url = node_engine_url(self.node_engine, node)
        with self._lock:
            engine = self._engines.get(url)
            if engine is None:
                client = _node_client(url, self.manager.api.api_version)
                engine = DockerBackend(client, "%s (node %s)" % (url, node_label(node)))
                _check_plain_http(engine, url)
                self._engines[url] = engine
        return engine

    def _node_lost(self, node_id):
        """A node found down or unreachable: new tasks keep off it for a while."""
        with self._lock:
            self._lost[node_id] = time.monotonic()
            for service_id, placed in list(self._placed.items()):
                if placed[2]["ID"] == node_id:
                    del self._placed[service_id]

    def _avoid(self):
        now = time.monotonic()
        with self._lock:
            return [node for node, when in self._lost.items() if now - when < LOST_MEMORY]

    # --- services as containers -------------------------------------------------------
    def _service(self, name_or_id):
        """A service of ours by instance container name or by id; None if there is none."""
        if name_or_id.startswith("fiddledock"):  # a container name (see _spec)
            rows = self._call("services", filters={"label": ["%s=1" % LABEL, "%s=%s"
                                                             % (NAME_LABEL, name_or_id)]})
            return rows[0] if rows else None
        try:
            service = self._call("inspect_service", name_or_id)
        except EngineError as exc:
            if exc.status_code == 404:
                return None
            raise
        labels = (service.get("Spec") or {}).get("Labels") or {}
        return service if labels.get(LABEL) == "1" else None

    def _tasks(self, service_ids):
        return self._call("tasks", filters={"service": list(service_ids)})

    def _record(self, service, task, node=None):
        """A ``Container`` from the service, its current task and the task's node."""
        spec = service.get("Spec") or {}
        labels = dict(spec.get("Labels") or {})
        template = spec.get("TaskTemplate") or {}
        container = template.get("ContainerSpec") or {}
        state, code, _ = task_state(task)
        record = Container(
            id=service["ID"], name=labels.get(NAME_LABEL) or spec.get("Name", ""),
            labels=labels, state=state, image=labels.get("fiddledock.image") or "",
            exit_code=code, user=container.get("User") or "", env=list(container.get("Env") or []),
            memory_limit=((template.get("Resources") or {}).get("Limits") or {}).get("MemoryBytes"))
        if node is not None:
            record.node = node_label(node)
            if state in ("running", "created") and (node["ID"] in self._avoid()
                                                   or not node_ready(node)):
                record.state, record.node_gone = "dead", True
        return record

    def inspect(self, name_or_id):
        service = self._service(name_or_id)
        if service is None:
            return None
        task = current_task(self._tasks([service["ID"]]))
        if task is None or not task.get("NodeID"):
            return self._record(service, task)
        node = self._call("inspect_node", task["NodeID"])
        record = self._record(service, task, node)
        container_id = task_container(task)
        if record.node_gone or not container_id:
            return record
        try:
            info = self._engine(node).inspect(container_id)
        except EngineUnavailable:
            self._node_lost(node["ID"])
            record.state, record.node_gone = "dead", True
            return record
        if info is not None:  # the node's own word: exit code, OOM, start time
            record.state, record.exit_code = info.state, info.exit_code
            record.oom_killed, record.started_at = info.oom_killed, info.started_at
            record.memory_limit = info.memory_limit or record.memory_limit
        return record

    def list(self, labels=None):
        filters = ["%s=1" % LABEL] + ["%s=%s" % item for item in (labels or {}).items()]
        services = self._call("services", filters={"label": filters})
        if not services:
            return []
        tasks = {}
        for task in self._tasks(s["ID"] for s in services):
            tasks.setdefault(task["ServiceID"], []).append(task)
        nodes = {node["ID"]: node for node in self._nodes()}
        rows = []
        for service in services:
            task = current_task(tasks.get(service["ID"]))
            rows.append(self._record(service, task, nodes.get((task or {}).get("NodeID"))))
        return rows

    def create(self, name, spec, command, labels, hostname):
        try:
            return self._create(name, spec, command, labels, hostname)
        except BaseException:
            self._told.progress = None  # no start follows: a later one must not use them
            raise

    def _create(self, name, spec, command, labels, hostname):
        if spec.network != "none":
            # Measured: a non-internal overlay network reaches the nodes' Swarm ports
            # (2377, 7946); only a firewall on every node could close them.
            raise InvalidSetting("instances on a Swarm cluster have no network: with one, "
                                 "they could reach the cluster's own ports. Leave out "
                                 "--network, or use the Docker backend for this instance",
                                 "network")
        image_id = self._image_id(spec.image)
        service_name = _service_name(name)
        all_labels = dict(spec.labels(), **labels)
        all_labels[NAME_LABEL] = name
        network = self._call("create_network", service_name + "-net", driver="overlay",
                             internal=spec.network == "none",
                             labels={LABEL: "1", "fiddledock.service": service_name},
                             within=CHANGE_TIMEOUT)
        template = task_template(spec, command, labels, hostname, image_id, network["Id"],
                                 self._avoid())
        try:
            # start-first: a fresh task (``start``) does not wait for the old one to
            # stop, which on a dead node would take until the manager notices.
            created = self._call("create_service", template, name=service_name,
                                 labels=all_labels, update_config={"Order": "start-first"},
                                 within=CHANGE_TIMEOUT)
        except FiddleDockError as exc:
            self._remove_network(network["Id"])
            raise EngineError(getattr(exc, "status_code", 500), "the Swarm manager refused to "
                              "create %s: %s" % (name, short_error(exc))) from None
        return created["ID"]

    def start(self, service_id):
        """Wait for the service's task to run; a new task if it has ended (or its node is gone).

        A node that lacks the image gets it from the manager's engine (told as
        the create running in this thread told ``prepare_image``), and the task
        is started again; a node that cannot pull a registry's image is an error.
        """
        progress = getattr(self._told, "progress", None) or (lambda line: None)
        self._told.progress = None
        deadline = time.monotonic() + START_TIMEOUT
        handled = set()  # ended tasks a new one was asked for
        copies = 0
        unplaced_since = None
        image = None
        pulling = None  # the node we said is pulling the image
        while True:
            task = current_task(self._tasks([service_id]))
            state, code, error = task_state(task)
            node = self._call("inspect_node", task["NodeID"]) if (task or {}).get("NodeID") \
                else None
            gone = node is not None and (node["ID"] in self._avoid() or not node_ready(node))
            if state == "running" and not gone:
                placed = (self._engine(node), task_container(task), node)
                with self._lock:
                    self._placed[service_id] = placed
                return
            ended = state in ("exited", "dead") or (state == "running" and gone)
            lacks_image = "No such image" in error and node is not None
            preparing = ((task or {}).get("Status") or {}).get("State") == "preparing"
            if (lacks_image or preparing) and image is None:
                image = ((self._service(service_id) or {}).get("Spec", {}).get("Labels")
                         or {}).get("fiddledock.image") or ""
            if ended and task["ID"] not in handled:
                if lacks_image and registry_of(image) is not None:
                    raise EngineError(500, "node %s could not pull the image %s from the "
                                      "registry %s: %s (does the node reach it, and trust it: "
                                      "insecure-registries for one without TLS?)"
                                      % (node_label(node), image, registry_of(image), error))
                if handled and not lacks_image:  # the new task ended too
                    raise EngineError(500, "the instance's task on node %s ended before it ran: "
                                      "%s" % (node_label(node) if node else "?",
                                              error or (task.get("Status") or {}).get("State")))
                if lacks_image and copies < IMAGE_COPIES:
                    # Removed from the node since we looked, a node new to us, or a
                    # pool's instance (whose create copies nothing first).
                    copies += 1
                    self._images_on.discard((node["ID"], self._image_id(image)))
                    self._ensure_image_on(node, image, self._image_id(image), progress)
                handled.add(task["ID"])
                self._new_task(service_id)
            elif preparing and node is not None and image and registry_of(image) \
                    and pulling != node["ID"]:
                pulling = node["ID"]  # said once per node: a pull has no progress to show here
                progress("node %s is getting the image %s from the registry %s..."
                         % (node_label(node), image, registry_of(image)))
            elif state == "created" and error:  # pending: no node fits
                unplaced_since = unplaced_since or time.monotonic()
                if time.monotonic() - unplaced_since > UNPLACED_GRACE:
                    raise EngineError(503, "Swarm cannot place the instance: %s (its memory and "
                                      "CPUs are reserved on one node)" % error)
            if time.monotonic() > deadline:
                raise EngineUnavailable("the instance's task did not start within %d s (%s)"
                                        % (START_TIMEOUT, error or state))
            time.sleep(POLL)

    def _new_task(self, service_id):
        """A fresh task for the service (force update), kept off nodes found gone."""
        with self._lock:
            self._placed.pop(service_id, None)
        service = self._call("inspect_service", service_id)
        spec = service["Spec"]
        template = spec["TaskTemplate"]
        template["ForceUpdate"] = (template.get("ForceUpdate") or 0) + 1
        placement = template.setdefault("Placement", {})
        placement["Constraints"] = [rule for rule in placement.get("Constraints") or []
                                    if not rule.startswith("node.id!=")] \
            + ["node.id!=%s" % node for node in sorted(self._avoid())]
        self._call("update_service", service_id, service["Version"]["Index"],
                   task_template=template, fetch_current_spec=True, within=CHANGE_TIMEOUT)

    def _locate(self, service_id):
        """``(node engine, container id, node)`` of the service's running task."""
        with self._lock:
            placed = self._placed.get(service_id)
        if placed is not None:
            return placed
        task = current_task(self._tasks([service_id]))
        state = task_state(task)[0]
        if state != "running" or not task_container(task):
            raise EngineError(409, "the instance is not running (its task is %s)"
                              % ((task or {}).get("Status") or {}).get("State", "missing"))
        node = self._call("inspect_node", task["NodeID"])
        placed = (self._engine(node), task_container(task), node)
        with self._lock:
            self._placed[service_id] = placed
        return placed

    def kill(self, service_id):
        try:
            engine, container_id, node = self._locate(service_id)
        except EngineError:  # not running, or gone
            return
        try:
            engine.kill(container_id)
        except EngineUnavailable:
            self._node_lost(node["ID"])

    def remove(self, service_id):
        """The task's container first (with its volumes, as the Docker backend removes
        one; Swarm would leave the volumes), then the service and its network."""
        try:
            service = self._call("inspect_service", service_id)
        except EngineError as exc:
            if exc.status_code == 404:
                return
            raise
        with self._lock:
            self._placed.pop(service_id, None)
        task = current_task(self._tasks([service_id]))
        engine = None
        if task_container(task) and task.get("NodeID") not in self._avoid():
            try:
                engine = self._engine(self._call("inspect_node", task["NodeID"]))
                engine.remove(task_container(task))
            except EngineUnavailable:
                self._node_lost(task["NodeID"])
                engine = None
        try:
            self._call("remove_service", service_id, within=CHANGE_TIMEOUT)
        except EngineError as exc:
            if exc.status_code != 404:
                raise
        for network in (service["Spec"].get("TaskTemplate") or {}).get("Networks") or []:
            self._remove_network(network["Target"])
        if engine is not None:
            self._remove_volumes(engine)

    def _remove_network(self, network_id):
        try:
            self._call("remove_network", network_id, within=CHANGE_TIMEOUT)
        except EngineError as exc:
            if exc.status_code != 404:
                raise

    @staticmethod
    def _remove_volumes(engine):
        """The unused copies Swarm makes of a task's volumes (volume prune leaves
        them; a remove does not)."""
        try:
            unused = engine.call(engine.api.volumes, filters={
                "label": "%s=1" % VOLUME_LABEL, "dangling": True}).get("Volumes") or []
            for volume in unused:
                engine.call(engine.api.remove_volume, volume["Name"], within=CHANGE_TIMEOUT)
        except FiddleDockError:
            pass  # in use meanwhile, or the node is busy: the next removal on it takes them

    def rename(self, service_id, name):
        if self._service(name) is not None:
            raise EngineError(409, "the name %s is already in use" % name)
        service = self._call("inspect_service", service_id)
        labels = dict(service["Spec"].get("Labels") or {}, **{NAME_LABEL: name})
        self._call("update_service", service_id, service["Version"]["Index"], labels=labels,
                   fetch_current_spec=True, within=CHANGE_TIMEOUT)

    def stats(self, service_id):
        engine, container_id, _ = self._locate(service_id)
        return engine.stats(container_id)

    # --- streams into a container -------------------------------------------------------
    def exec_socket(self, service_id, cmd, user=None, workdir=None):
        engine, container_id, node = self._locate(service_id)
        exec_id, sock, keepalive = engine.exec_socket(container_id, cmd, user, workdir)
        return "%s %s" % (node_engine_url(self.node_engine, node), exec_id), sock, keepalive

    def exec_exit_code(self, exec_id, wait=5.0):
        url, _, own_id = exec_id.partition(" ")
        with self._lock:
            engine = self._engines[url]
        return engine.exec_exit_code(own_id, wait)

    def attach(self, service_id):
        engine, container_id, _ = self._locate(service_id)
        return engine.attach(container_id)
