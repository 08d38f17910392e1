"""Where Conclave's deployments run, and whether the cluster can run them at all.

Each deployment's replicas need Ray resources, from the config (:mod:`cluster.serve.app` turns
``pools[].num_cpus / num_gpus / memory_gb / resources / accelerator_type``,
``routing.resources`` and ``serving.resources`` into Serve's ``ray_actor_options``). Ray
places a replica only on a node that has them, so a pool naming a worker group's custom
resource lands on that group, and the router and gateway can be kept elsewhere.

:func:`check_cluster` runs before the app is bound:

- a deployment that no alive node could host is a deploy-time error naming what it needs
  and what the nodes have (Serve would otherwise wait for such a node for ever), unless
  ``serving.autoscaling_nodes`` says the autoscaler adds nodes on demand;
- the app is *multi-node* when more than one node is alive, or ``serving.autoscaling_nodes``
  is set (workers join later). A multi-node app refuses a node-local Redis: ``embedded``
  and ``unix://`` (a socket on one node's disk), and a loopback ``redis://`` once the nodes
  are on more than one host (each host's 127.0.0.1 is itself).

The checks are plain functions over resource dicts; only :func:`alive_nodes` reads Ray.
:func:`unplaceable` also checks a KubeRay manifest's groups (``conclave deploy render``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from cluster.config import ConclaveConfig, ConfigError
from cluster.serve.pool_config import PoolConfig

log = logging.getLogger(__name__)

ACCELERATOR_PREFIX = "accelerator_type:"  # Ray's resource for an accelerator_type option
_ACCELERATOR_SHARE = 0.001  # what Ray asks of that resource per actor
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Node:
    """One Ray node: its id, IP address and total resources."""

    node_id: str
    address: str
    resources: dict[str, float]


def alive_nodes() -> list[Node]:
    """The alive nodes of the Ray cluster this process is connected to."""
    import ray

    return [Node(n["NodeID"], n["NodeManagerAddress"], dict(n["Resources"]))
            for n in ray.nodes() if n["Alive"]]


def pool_actor_options(pool: PoolConfig) -> dict[str, Any]:
    """``ray_actor_options`` of one expert pool's replicas."""
    actor: dict[str, Any] = {"num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus,
                             **_custom(pool.resources)}
    if pool.memory_gb:
        actor["memory"] = int(pool.memory_gb * 2**30)
    if pool.accelerator_type:
        actor["accelerator_type"] = pool.accelerator_type
    return actor


def front_actor_options(resources: dict[str, float]) -> dict[str, Any]:
    """``ray_actor_options`` of the router and gateway replicas: no CPU reserved (they wait
    on I/O and the pools), only the custom resources that pin them to their nodes."""
    return {"num_cpus": 0, **_custom(resources)}


def actor_options(config: ConclaveConfig) -> dict[str, dict[str, Any]]:
    """Every deployment's ``ray_actor_options``, by deployment name."""
    options = {pool.deployment_name: pool_actor_options(pool) for pool in config.pools}
    return options | {"router": front_actor_options(config.routing.resources),
                      "gateway": front_actor_options(config.serving.resources)}


def _custom(resources: dict[str, float]) -> dict[str, Any]:
    return {"resources": dict(resources)} if resources else {}


def replica_needs(actor_options: dict) -> dict[str, float]:
    """The Ray resources one replica with these ``ray_actor_options`` needs."""
    needs = {"CPU": actor_options.get("num_cpus") or 0.0,
             "GPU": actor_options.get("num_gpus") or 0.0,
             "memory": float(actor_options.get("memory") or 0),
             **actor_options.get("resources", {})}
    if actor_options.get("accelerator_type"):
        needs[ACCELERATOR_PREFIX + actor_options["accelerator_type"]] = _ACCELERATOR_SHARE
    return {name: amount for name, amount in needs.items() if amount > 0}


def fits(needs: dict[str, float], resources: dict[str, float]) -> bool:
    """Whether a node with ``resources`` in total could host one such replica."""
    return all(resources.get(name, 0.0) >= amount for name, amount in needs.items())


def unplaceable(needs: dict[str, dict[str, float]],
                nodes: dict[str, dict[str, float]]) -> list[str]:
    """One line per deployment that fits on none of ``nodes`` (name -> total resources)."""
    have = "; ".join(f"{name}: {_describe(res)}" for name, res in nodes.items()) or "none"
    return [f"deployment {deployment!r} needs {_describe(need)} per replica, and no node "
            f"has that (nodes: {have})"
            for deployment, need in needs.items()
            if not any(fits(need, res) for res in nodes.values())]


def is_multi_node(nodes: list[Node], autoscaling_nodes: bool) -> bool:
    """More than one node alive now, or nodes that join later."""
    return autoscaling_nodes or len(nodes) > 1


def redis_problem(url: str, nodes: list[Node], autoscaling_nodes: bool) -> str | None:
    """Why a multi-node app cannot use the Redis at ``url`` (None: it can)."""
    if not is_multi_node(nodes, autoscaling_nodes):
        return None
    why = ("joining later" if autoscaling_nodes and len(nodes) <= 1
           else f"{len(nodes)} alive")
    scheme = url.split("://", 1)[0] if "://" in url else url
    if scheme in ("embedded", "unix"):
        return (f"redis.url {scheme!r} is a Redis on one node's disk (a unix socket), and "
                f"this is a multi-node cluster (nodes {why}) whose other nodes cannot reach "
                "it: set redis.url or CONCLAVE_REDIS_URL to a redis:// or rediss:// URL "
                "of a Redis server every node reaches")
    hosts = {node.address for node in nodes}
    if urlparse(url).hostname in _LOOPBACK and (autoscaling_nodes or len(hosts) > 1):
        return (f"redis.url points at a loopback address, and the cluster's nodes are on "
                f"more than one host (nodes {why}): each host's loopback is itself; use "
                "an address every node reaches")
    return None


def check_cluster(config: ConclaveConfig, url: str, nodes: list[Node]) -> None:
    """Raise :class:`ConfigError` when the app cannot work on ``nodes`` (see module doc);
    ``url`` is the Redis URL the replicas will get."""
    autoscaling = config.serving.autoscaling_nodes
    problem = redis_problem(url, nodes, autoscaling)
    if problem:
        raise ConfigError(problem)
    if not nodes:
        return  # not connected to Ray: nothing to compare with
    needs = {name: replica_needs(options) for name, options in actor_options(config).items()}
    lines = unplaceable(needs, {node.node_id[:8]: node.resources for node in nodes})
    if lines and autoscaling:
        log.warning("waiting for the autoscaler to add nodes: %s", "; ".join(lines))
    elif lines:
        raise ConfigError("; ".join(lines))


def _describe(resources: dict[str, float]) -> str:
    shown = {name: amount for name, amount in sorted(resources.items())
             if not name.startswith("node:") and name != "object_store_memory"}
    return "{" + ", ".join(f"{name}: {amount / 2**30:.3g} GiB" if name == "memory"
                           else f"{name}: {amount:g}" for name, amount in shown.items()) + "}"
