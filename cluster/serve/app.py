"""``build_app(args)``: a validated :class:`ConclaveConfig` → a bound Ray Serve application.

The one entry point for ``conclave serve``, ``serve run``/``serve deploy`` and KubeRay
(``import_path: cluster.serve.app:build_app``, ``args``: a ConclaveConfig dict)::

    gateway (ingress, FastAPI)  ←  router (encoder, strategies, pattern cache)
                                ←  one expert pool per ``pools`` entry

``build_app`` runs in the driver: it checks the app against the cluster
(:mod:`cluster.deploy.placement`: every deployment fits some node; no node-local Redis on a
multi-node cluster), resolves ``redis.url: embedded`` to the running
embedded server's ``unix://`` socket (replicas on this machine reach it there; a
multi-node cluster needs a ``redis://`` URL) and seeds the registry with the config's
experts (and the demo pool when ``demo_pool``), then binds the deployments.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray import serve
from ray.serve import Application

from cluster.config import ConclaveConfig, ConfigError, parse_config
from cluster.deploy.placement import (
    alive_nodes,
    check_cluster,
    front_actor_options,
    pool_actor_options,
)
from cluster.http.admin import admin_token
from cluster.serve.affinity import affinity_options
from cluster.serve.gateway import Gateway
from cluster.serve.pool import ExpertPoolServer
from cluster.serve.pool_config import PoolConfig
from cluster.serve.router import RouterServer
from experts.redis_conn import connect, resolve_url
from experts.registry import ExpertRegistry

REDIS_ENV = "CONCLAVE_REDIS_URL"
APP_NAME = "conclave"


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The bound application for ``args`` (a ConclaveConfig dict); :class:`ConfigError`
    when it does not validate."""
    config = parse_config(args)
    check_cluster(config, redis_url(config), alive_nodes() if ray.is_initialized() else [])
    config = runtime_config(config)
    seed_registry(config)
    data = config.model_dump(mode="json")
    pools = {
        pool.name: serve.deployment(ExpertPoolServer, name=pool.deployment_name,
                                    **pool_options(pool),
                                    **affinity_options(config.routing.sessions.affinity),
                                    ).bind(data, pool.name)
        for pool in config.pools
    }
    router = serve.deployment(RouterServer, name="router",
                              **router_options(config)).bind(data)
    gateway = serve.deployment(serve.ingress()(Gateway), name="gateway",
                               **gateway_options(config))
    return gateway.bind(data, router, pools, admin_token(config.serving))


def redis_url(config: ConclaveConfig) -> str:
    """The Redis URL asked for: the env override, else the config's."""
    return os.environ.get(REDIS_ENV) or config.redis.url


def runtime_config(config: ConclaveConfig) -> ConclaveConfig:
    """``config`` with the Redis URL replicas should use (env override, embedded → unix)."""
    url = resolve_url(redis_url(config))
    return config.model_copy(update={"redis": config.redis.model_copy(update={"url": url})})


def seed_registry(config: ConclaveConfig) -> list[str]:
    """Add the config's experts (and the demo pool) that are not registered yet."""
    specs = config.start_specs()
    pools = {pool.name for pool in config.pools}
    for spec in specs:
        if spec.pool not in pools:
            raise ConfigError(f"expert {spec.id!r}: unknown pool {spec.pool!r}; "
                              f"pools: {', '.join(sorted(pools))}")
    registry = ExpertRegistry(connect(config.redis.url), namespace=config.redis.namespace)
    return registry.seed(specs)


def pool_options(pool: PoolConfig) -> dict[str, Any]:
    """Serve deployment options for one expert pool."""
    options: dict[str, Any] = {
        "ray_actor_options": pool_actor_options(pool),
        # A batch can only fill when that many requests may be in flight.
        "max_ongoing_requests": max(pool.max_ongoing_requests, pool.max_batch_size),
    }
    if pool.autoscaling is not None:
        options["autoscaling_config"] = pool.autoscaling
    else:
        options["num_replicas"] = pool.num_replicas
    return options | pool.deployment


def router_options(config: ConclaveConfig) -> dict[str, Any]:
    return {
        "num_replicas": config.routing.num_replicas,
        "ray_actor_options": front_actor_options(config.routing.resources),
        "max_ongoing_requests": max(config.serving.max_ongoing_requests,
                                    config.routing.batch_size),
    }


def gateway_options(config: ConclaveConfig) -> dict[str, Any]:
    serving = config.serving
    return {
        "ray_actor_options": front_actor_options(serving.resources),
        "num_replicas": serving.num_replicas,
        "max_ongoing_requests": serving.max_ongoing_requests,
        "max_queued_requests": serving.max_queued_requests,
        # Over the queue limit: 503 with Retry-After, never a hang.
        "backpressure_config": {"status_code": 503, "retry_after_s": 1},
    }
