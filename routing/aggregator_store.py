"""The aggregators chosen by the probe (:func:`routing.aggregate.select_aggregators`),
kept in Redis so the router applies them per query and the batch job picks them up.

One JSON value at ``{ns}:aggregators``. The task of a query is the domain of its
best-weighted expert (the spec's ``domain``, else the expert's id); its aggregator is the
one chosen for that task when that expert is live, else the fallback when live, else none
(the answer combiner then uses the best-weighted expert, as without a choice).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import redis

from experts.redis_conn import RedisBreaker, RedisUnavailable
from routing.aggregate import Aggregator, best_weighted
from routing.decision import Decision
from routing.errors import RoutingError

log = logging.getLogger(__name__)

Chooser = Callable[[Decision], str | None]


@dataclass
class AggregatorChoice:
    """Aggregator per task (domain), the fallback, and the probe's accuracy table
    ``{domain: {candidate: accuracy}}`` it came from."""

    by_domain: dict[str, str]
    fallback: str | None
    table: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_probe(cls, aggregator: Aggregator,
                   table: dict[str, dict[str, float]]) -> AggregatorChoice:
        """The choice :func:`~routing.aggregate.select_aggregators` returned."""
        return cls(dict(aggregator.by_domain), aggregator.fallback, table)

    @classmethod
    def from_dict(cls, data: dict) -> AggregatorChoice:
        try:
            return cls(
                by_domain={str(k): str(v) for k, v in data["by_domain"].items()},
                fallback=None if data.get("fallback") is None else str(data["fallback"]),
                table={str(d): {str(c): float(a) for c, a in row.items()}
                       for d, row in (data.get("table") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise RoutingError(f"not an aggregator choice: {err!r}") from None


class AggregatorStore:
    """The stored :class:`AggregatorChoice` (a redis-py client with string replies)."""

    def __init__(self, client, namespace: str = "conclave"):
        self.client, self.namespace = client, namespace

    @property
    def key(self) -> str:
        return f"{self.namespace}:aggregators"

    def save(self, choice: AggregatorChoice) -> None:
        """Store ``choice``, replacing any earlier one."""
        self.client.set(self.key, json.dumps(asdict(choice)))

    def load(self) -> AggregatorChoice | None:
        """The stored choice; None when there is none. :class:`RoutingError` when the
        stored value is not a choice."""
        raw = self.client.get(self.key)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise RoutingError(f"{self.key}: not JSON ({err.msg})") from None
        return AggregatorChoice.from_dict(data if isinstance(data, dict) else {})

    def clear(self) -> bool:
        """Delete the stored choice; True when there was one."""
        return bool(self.client.delete(self.key))


def task_of(decision: Decision, domain_of: Callable[[str], str]) -> str:
    """The task of a decision: the domain of its best-weighted expert."""
    return domain_of(best_weighted(decision))


def choose_aggregator(decision: Decision, choice: AggregatorChoice | None,
                      domain_of: Callable[[str], str],
                      is_live: Callable[[str], bool]) -> str | None:
    """The aggregator for ``decision`` under ``choice`` (see module doc); None: no choice
    applies."""
    if choice is None or not decision.experts:
        return None
    chosen = choice.by_domain.get(task_of(decision, domain_of))
    for name in (chosen, choice.fallback):
        if name is not None and is_live(name):
            return name
    return None


def apply_chooser(decisions: list[Decision], choose: Chooser) -> list[Decision]:
    """Set every decision's ``aggregator`` from ``choose`` (cached decisions too: the
    choice may have changed since they were made)."""
    for decision in decisions:
        decision.aggregator = choose(decision)
    return decisions


class StoredAggregators:
    """Follows the stored choice: :meth:`current` reads it (one GET) and returns the
    chooser for it. When Redis is unreachable or the value is bad, the last good choice
    stays in use, with one warning, and Redis is left alone for ``retry_s`` seconds (a
    routing batch must not wait on connect timeouts during an outage)."""

    def __init__(self, store: AggregatorStore, domain_of: Callable[[str], str],
                 is_live: Callable[[str], bool], retry_s: float = 5.0):
        self.store, self.domain_of, self.is_live = store, domain_of, is_live
        self.choice: AggregatorChoice | None = None
        self._breaker = RedisBreaker(
            log, "cannot read the aggregator choice, keeping the last one: %s",
            "aggregator choice readable again", retry_s=retry_s,
            errors=(redis.RedisError, OSError, RoutingError))

    def current(self) -> Chooser:
        """The chooser under the choice stored now (or the last one read)."""
        try:
            self.choice = self._breaker.call(self.store.load)
        except (RedisUnavailable, *self._breaker.errors):
            pass  # the last good choice stays
        return partial(choose_aggregator, choice=self.choice, domain_of=self.domain_of,
                       is_live=self.is_live)


def spec_domain(lookup: Callable[[str], object]) -> Callable[[str], str]:
    """``domain_of`` from a spec lookup: the spec's ``domain``, else the expert's id (also
    for an expert the lookup does not know)."""

    def domain_of(expert_id: str) -> str:
        try:
            return getattr(lookup(expert_id), "domain", None) or expert_id
        except (LookupError, ValueError):  # unknown expert
            return expert_id

    return domain_of

