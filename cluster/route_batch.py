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

from routing.aggregator_store import Chooser, apply_chooser
from routing.decision import RouteOptions
from routing.strategies.base import RoutingError

ROUTE_FIELDS = ("k", "k_mass", "k_max", "strategy", "cost_weight", "sample", "seed")


@dataclass
class RouteItem:
    query: str
    options: dict  # RouteOptions fields; other keys (e.g. "aggregation") are ignored


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
        except RoutingError as err:
            for i in members:
                replies[i] = {"error": str(err)}
            return
        if choose is not None:
            apply_chooser(decisions, choose)
        for i, decision in zip(members, decisions, strict=True):
            status = "hit" if decision.cached else "miss" if cached else "off"
            replies[i] = {"decision": decision.to_dict(), "cache": status}


def _options_key(options: dict) -> str:
    return json.dumps({k: options.get(k) for k in ROUTE_FIELDS}, sort_keys=True)
