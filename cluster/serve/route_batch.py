"""Route a batch of concurrent queries: one ``Router.route`` call (one encoder pass, the
pattern cache, then the strategy) per distinct set of decision options in the batch.

Plain Python under the router deployment (one call per gateway batch, on a worker thread;
batches are serialised here); unit-testable without Ray.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cluster.ops.tracing import TraceContext, record_span
from cluster.serve.route_messages import CacheStatus, RouteQuery, RouteResult
from routing.aggregator_store import Chooser, apply_chooser
from routing.decision import Decision
from routing.errors import RoutingError


class RouteBatcher:
    """Routes batches with one shared :class:`routing.router.Router`.

    ``lock`` guards the router against expert changes arriving from the registry thread.
    ``aggregators``: called once per batch, returns the chooser that sets each decision's
    ``aggregator`` (e.g. :meth:`routing.aggregator_store.StoredAggregators.current`)."""

    def __init__(self, router, aggregators: Callable[[], Chooser] | None = None):
        self.router = router
        self.aggregators = aggregators
        self.lock = threading.Lock()

    def route(self, queries: list[RouteQuery]) -> list[RouteResult]:
        """One result per query, in order: its decision, or the :class:`RoutingError`
        that stopped it (this query's alone)."""
        started = time.perf_counter()
        found: list[tuple[Decision, CacheStatus] | RoutingError] = [
            RoutingError("the query is empty")] * len(queries)
        groups: dict[str, list[int]] = {}  # by the options a decision depends on
        for i, item in enumerate(queries):
            if isinstance(item.query, str) and item.query.strip():
                groups.setdefault(item.options.decision_key(), []).append(i)
        with self.lock:  # one batch at a time: the router and the aggregator choice
            choose = self.aggregators() if groups and self.aggregators else None
            for members in groups.values():
                self._route_group(queries, members, found, choose)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return [RouteResult.failed(one) if isinstance(one, RoutingError) else
                RouteResult(*one, routing_ms=elapsed_ms, batch_size=len(queries))
                for one in found]

    def _route_group(self, queries: list[RouteQuery], members: list[int], found: list,
                     choose: Chooser | None) -> None:
        options = queries[members[0]].options
        try:
            decisions = self.router.route([queries[i].query for i in members], options)
            cached = self.router.cache is not None
            phases = dict(self.router.phases)
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
