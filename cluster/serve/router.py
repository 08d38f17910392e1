"""Router deployment: the encoder, the strategies' indexes and the pattern cache. Each call
is one batch the gateway coalesced (``routing.batch_size``), routed in one encoder pass per
set of options on a worker thread; routing is batched there, once.

It follows the registry (:class:`ExpertCatalog` on ``ExpertRegistry.watch``): an added
expert is indexed (from its stored validation outcomes, else its example questions), a
removed one forgotten, and the pattern cache moves to the new registry version (old
patterns are never found again); no redeploy. Each batch also reads the aggregator choice
stored by ``conclave aggregators select`` and sets every decision's ``aggregator`` from it
(:mod:`routing.aggregator_store`).
"""

from __future__ import annotations

import asyncio
import logging

from cluster.catalog import ExpertCatalog
from cluster.config import parse_config
from cluster.ops.request_ids import install_logging
from cluster.ops.tracing import setup_tracing
from cluster.serve.route_batch import RouteBatcher
from cluster.serve.route_messages import RouteQuery, RouteResult
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from routing.aggregator_store import AggregatorStore, StoredAggregators, spec_domain
from routing.cache import build_pattern_cache
from routing.encoder import build_encoder
from routing.errors import RoutingError
from routing.outcomes import OutcomeError
from routing.profile_store import ProfileStore
from routing.router import build_router, example_outcomes

log = logging.getLogger(__name__)


class RouterServer:
    """Routes queries for the gateway: :class:`RouteQuery` in, :class:`RouteResult` out."""

    def __init__(self, config: dict):
        cfg = parse_config(config, paths_on_load=True)
        setup_tracing(cfg.tracing, "router")
        install_logging()
        client = connect(cfg.redis.url)
        self.catalog = ExpertCatalog(ExpertRegistry(client, namespace=cfg.redis.namespace))
        self.catalog.refresh()
        self.profiles = ProfileStore(client, namespace=cfg.redis.namespace)
        cache = build_pattern_cache(cfg.routing.cache, cfg.redis.url,
                                    namespace=cfg.redis.namespace)
        # Stored validation outcomes too, so a restart keeps an onboarded expert's profile.
        router = build_router(cfg, self.catalog.specs(), None, encoder=build_encoder(cfg.encoder),
                              cache=cache, version=lambda: self.catalog.version,
                              profiles=self.profiles)
        aggregators = StoredAggregators(AggregatorStore(client, namespace=cfg.redis.namespace),
                                        spec_domain(self.catalog.get), self.catalog.is_live)
        self.batcher = RouteBatcher(router, aggregators=aggregators.current)
        self.catalog.on_change(self._apply)
        self.catalog.start()

    async def route_many(self, queries: list[RouteQuery]) -> list[RouteResult]:
        """The gateway's coalesced batch: one result per query (an error stays its own)."""
        return await asyncio.to_thread(self.batcher.route, queries)

    def _apply(self, added, removed, version) -> None:
        router = self.batcher.router
        for spec in added:
            try:
                outcomes = self._outcomes(spec)
                with self.batcher.lock:
                    router.add_expert(spec.id, outcomes, cost=spec.cost)
            except (RoutingError, OutcomeError, ValueError) as err:
                log.warning("cannot index expert %s: %s", spec.id, err)
        for expert_id in removed:
            with self.batcher.lock:
                if expert_id in router.experts:
                    router.remove_expert(expert_id)
        log.info("registry v%s: +%d -%d experts", version, len(added), len(removed))

    def _outcomes(self, spec):
        """The expert's stored validation outcomes, else its example questions (against the
        other experts' examples, as at start)."""
        try:
            return self.profiles.load(spec.id)
        except OutcomeError:
            return example_outcomes(spec, self.catalog.specs())
