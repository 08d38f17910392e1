"""Gateway deployment (the ingress): wires the router and pool handles, the live expert
catalog, the aggregator and the metrics into :func:`cluster.http_app.build_http_app`.

A plain class: Serve wraps it with ``serve.ingress()`` in :mod:`cluster.app`, and calls
``__serve_build_asgi_app__`` once the replica is constructed.
"""

from __future__ import annotations

import logging

from ray.exceptions import RayActorError

from cluster.admin import ExpertAdmin, admin_token, allowed_roots
from cluster.catalog import ExpertCatalog
from cluster.config import parse_config
from cluster.http_app import GatewayParts, build_http_app
from cluster.metrics import ConclaveMetrics
from cluster.openai_serving import ConclaveService
from experts.loader import engine_key
from experts.redis_conn import connect
from experts.registry import ExpertRegistry

log = logging.getLogger(__name__)


class Gateway:
    """OpenAI-compatible front door of one Conclave application."""

    def __init__(self, config: dict, router, pools: dict, token: str | None = None):
        self.config = parse_config(config)
        registry = ExpertRegistry(connect(self.config.redis.url),
                                  namespace=self.config.redis.namespace)
        self.catalog = ExpertCatalog(registry).start()
        self.metrics = ConclaveMetrics()
        self._router = router
        self._pools = pools
        self._handles: dict[tuple[str, str], object] = {}
        self.service = ConclaveService(self.config, self._route, self._call_expert,
                                       self.catalog, self.metrics)
        self.admin = ExpertAdmin(self.catalog, token or admin_token(self.config.serving),
                                 allowed_roots(self.config.serving))

    def __serve_build_asgi_app__(self):
        serving = self.config.serving
        return build_http_app(GatewayParts(self.service, self.admin, self.metrics,
                                           serving.request_timeout_s, serving.max_body_bytes))

    async def _route(self, query: str, options: dict) -> dict:
        return await _retry_dead_replica(lambda: self._router.route.remote(query, options))

    async def _call_expert(self, expert_id: str, prompt: object, params: dict) -> dict:
        spec = self.catalog.get(expert_id)
        handle = self._handle(spec.pool, engine_key(spec))
        reply = await _retry_dead_replica(
            lambda: handle.generate.remote(expert_id, prompt, params)
        )
        self.metrics.record_generation(spec.pool, expert_id, reply)
        return reply

    def _handle(self, pool: str, key: str):
        """The pool handle pinned to one engine key (cached: handles are not free)."""
        handle = self._handles.get((pool, key))
        if handle is None:
            handle = self._pools[pool].options(multiplexed_model_id=key)
            self._handles[(pool, key)] = handle
        return handle


async def _retry_dead_replica(call):
    """``await call()``, once more when the replica died under it: that is no fault of
    the request or the expert, and Serve sends the retry to a live replica (or waits
    for the replacement). A second failure goes to the caller (the panel fails over)."""
    try:
        return await call()
    except RayActorError as err:
        log.warning("replica died during a call (%s); retrying once", type(err).__name__)
        return await call()
