"""Router deployment: the encoder, the strategies' indexes and the pattern cache. Each call
is one batch the gateway coalesced (``routing.batch_size``), routed in one encoder pass per
set of options on a worker thread (:func:`route_batch`: one ``Router.route`` call, that is
one encoder pass, the pattern cache, then the strategy, per distinct set of decision options
in the batch); routing is batched there, once.

It follows the registry (:class:`ExpertCatalog` on ``ExpertRegistry.watch``): an added
expert is indexed (from its stored validation outcomes, else its example questions), a
removed one forgotten, and the pattern cache moves to the new registry version (old
patterns are never found again); no redeploy. Each batch also reads the aggregator choice
stored by ``conclave aggregators select`` and sets every decision's ``aggregator`` from it
(:mod:`routing.aggregate`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from cluster.catalog import ExpertCatalog
from cluster.config import parse_config
from cluster.ops.tracing import TraceContext, install_logging, record_span, setup_tracing
from cluster.serve.messages import CacheStatus, RouteQuery, RouteResult
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from routing.aggregate import (
    AggregatorStore,
    Chooser,
    StoredAggregators,
    apply_chooser,
    spec_domain,
)
from routing.cache import build_pattern_cache
from routing.encoder import build_encoder
from routing.errors import RoutingError
from routing.outcomes import OutcomeError
from routing.profile_store import ProfileStore
from routing.router import build_router, example_outcomes
from routing.selection import Decision

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
        self.router, self.aggregators = router, aggregators.current
        self.lock = threading.Lock()  # one batch or expert change at a time
        self.catalog.on_change(self._apply)
        self.catalog.start()

    async def route_many(self, queries: list[RouteQuery]) -> list[RouteResult]:
        """The gateway's coalesced batch: one result per query (an error stays its own)."""
        return await asyncio.to_thread(self._route_locked, queries)

    def _route_locked(self, queries: list[RouteQuery]) -> list[RouteResult]:
        with self.lock:
            return route_batch(self.router, queries, self.aggregators)

    def _apply(self, added, removed, version) -> None:
        router = self.router
        for spec in added:
            try:
                outcomes = self._outcomes(spec)
                with self.lock:
                    router.add_expert(spec.id, outcomes, cost=spec.cost)
            except (RoutingError, OutcomeError, ValueError) as err:
                log.warning("cannot index expert %s: %s", spec.id, err)
        for expert_id in removed:
            with self.lock:
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


def route_batch(router, queries: list[RouteQuery],
                aggregators: Callable[[], Chooser] | None = None) -> list[RouteResult]:
    """One result per query, in order: its decision, or the :class:`RoutingError` that
    stopped it (this query's alone). ``aggregators``: called once per batch, returns the
    chooser that sets each decision's ``aggregator``."""
    started = time.perf_counter()
    found: list[tuple[Decision, CacheStatus] | RoutingError] = [
        RoutingError("the query is empty")] * len(queries)
    groups: dict[str, list[int]] = {}  # by the options a decision depends on
    for i, item in enumerate(queries):
        if isinstance(item.query, str) and item.query.strip():
            groups.setdefault(item.options.decision_key(), []).append(i)
    choose = aggregators() if groups and aggregators else None
    for members in groups.values():
        _route_group(router, queries, members, found, choose)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return [RouteResult.failed(one) if isinstance(one, RoutingError) else
            RouteResult(*one, routing_ms=elapsed_ms, batch_size=len(queries))
            for one in found]


def _route_group(router, queries: list[RouteQuery], members: list[int], found: list,
                 choose: Chooser | None) -> None:
    options = queries[members[0]].options
    try:
        decisions = router.route([queries[i].query for i in members], options)
        cached = router.cache is not None
        phases = dict(router.phases)
    except RoutingError as err:
        for i in members:
            found[i] = err
        return
    if choose is not None:
        apply_chooser(decisions, choose)
    for i, decision in zip(members, decisions, strict=True):
        status = "hit" if decision.cached else "miss" if cached else "off"
        found[i] = (decision, status)
        trace_route(queries[i].trace, phases, decision.strategy, status, decision.experts,
                    len(members))


def trace_route(context: TraceContext | None, phases: dict[str, tuple[int, int]],
                strategy: str, cache: str, experts: list[str], batch_size: int) -> None:
    """The router's spans for one query of a batch: the batch's encoder pass, its
    pattern-cache lookup and, on a miss, the strategy, under the query's own trace."""
    if context is None or context.traceparent is None or not phases:
        return
    start, end = phases["encode"][0], phases["strategy"][1]
    router = record_span("router", context, start, end, **{
        "conclave.strategy": strategy, "conclave.experts": experts, "conclave.cache": cache,
        "conclave.batch_size": batch_size})
    record_span("encode", router, *phases["encode"])
    record_span("pattern_cache.lookup", router, *phases["cache"], **{"conclave.cache": cache})
    if cache != "hit":
        record_span("routing.strategy", router, *phases["strategy"], **{
            "conclave.strategy": strategy, "conclave.experts": experts})
