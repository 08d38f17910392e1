"""Route a batch of concurrent queries: one ``Router.route`` call (one encoder pass, the
pattern cache, then the strategy) per distinct set of options in the batch.

Plain Python under the router deployment's ``@serve.batch``; unit-testable without Ray.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cluster.tracing import TraceContext, record_span
from routing.aggregator_store import Chooser, apply_chooser
from routing.decision import RouteOptions
from routing.strategies.base import RoutingError

ROUTE_FIELDS = ("k", "strategy", "cost_weight", "sample", "seed")


@dataclass
class RouteItem:
    query: str
    options: dict  # RouteOptions fields; other keys (e.g. "aggregation") are ignored
    trace: TraceContext | None = None  # the gateway's routing span


def route_options(options: dict) -> RouteOptions:
    """The :class:`RouteOptions` in ``options``; :class:`RoutingError` when invalid."""
    try:
        return RouteOptions(**{k: options[k] for k in ROUTE_FIELDS if k in options})
    except ValueError as err:
        raise RoutingError(f"bad routing options: {err}") from None


class BatchRouter:
    """Routes batches with one shared :class:`routing.router.Router`.

    ``lock`` guards the router against expert changes arriving from the registry thread.
    ``aggregators``: called once per batch, returns the chooser that sets each decision's
    ``aggregator`` (e.g. :meth:`routing.aggregator_store.StoredAggregators.current`)."""

    def __init__(self, router, aggregators: Callable[[], Chooser] | None = None):
        self.router = router
        self.aggregators = aggregators
        self.lock = threading.Lock()

    def route(self, items: list[RouteItem]) -> list[dict]:
        """One reply per item: ``{"decision", "cache", "routing_ms", "batch_size"}``, or
        ``{"error": message}`` for an item that cannot be routed."""
        started = time.perf_counter()
        replies: list[dict] = [{} for _ in items]
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            if not isinstance(item.query, str) or not item.query.strip():
                replies[i] = {"error": "the query is empty"}
            else:
                groups.setdefault(_options_key(item.options), []).append(i)
        choose = self.aggregators() if groups and self.aggregators else None
        for members in groups.values():
            self._route_group(items, members, replies, choose)
        elapsed_ms = (time.perf_counter() - started) * 1000
        for reply in replies:
            if "error" not in reply:
                reply.update(routing_ms=elapsed_ms, batch_size=len(items))
        return replies

    def _route_group(self, items: list[RouteItem], members: list[int],
                     replies: list[dict], choose: Chooser | None) -> None:
        try:
            options = route_options(items[members[0]].options)
            with self.lock:
                decisions = self.router.route([items[i].query for i in members], options)
                cached = self.router.cache is not None
                phases = dict(self.router.phases)
        except RoutingError as err:
            for i in members:
                replies[i] = {"error": str(err)}
            return
        if choose is not None:
            apply_chooser(decisions, choose)
        for i, decision in zip(members, decisions, strict=True):
            status = "hit" if decision.cached else "miss" if cached else "off"
            replies[i] = {"decision": decision.to_dict(), "cache": status}
            trace_route(items[i].trace, phases, decision.strategy, status, decision.experts,
                        len(members))


def _options_key(options: dict) -> str:
    return json.dumps({k: options.get(k) for k in ROUTE_FIELDS}, sort_keys=True)


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
