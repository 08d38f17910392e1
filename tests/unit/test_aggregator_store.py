"""The stored aggregator choice: the Redis store, the per-query rule, the router hook and
the batch job's use of it."""

from __future__ import annotations

import pytest
from text_tables import QUERIES, text_table

from cluster.serve.messages import RouteQuery
from cluster.serve.router import route_batch
from experts.redis_conn import connect
from experts.spec import ExpertSpec
from routing.aggregate import (
    Aggregator,
    AggregatorChoice,
    AggregatorStore,
    StoredAggregators,
    choose_aggregator,
    spec_domain,
)
from routing.cache.memory import MemoryPatternCache
from routing.errors import RoutingError
from routing.options import RouteOptions
from routing.router import Router
from routing.selection import Decision
from routing.strategies.skills import SkillsStrategy

CHOICE = AggregatorChoice(by_domain={"math": "mathy", "law": "lawyer"}, fallback="medic",
                          table={"math": {"mathy": 0.75, "medic": 0.5}})
DOMAINS = {"mathy": "math", "lawyer": "law", "medic": "health"}


def decision(*experts: str, weights=None) -> Decision:
    weights = weights or [1 / len(experts)] * len(experts)
    return Decision(query="q", experts=list(experts), weights=weights, strategy="s",
                    ranked=[], explanation={})


def choose(d: Decision, live=("mathy", "lawyer", "medic"), domains=DOMAINS):
    return choose_aggregator(d, CHOICE, lambda e: domains.get(e, e), lambda e: e in live)


@pytest.fixture()
def store(redis_url) -> AggregatorStore:
    return AggregatorStore(connect(redis_url), namespace="t")


def test_store_round_trip_and_clear(store):
    assert store.load() is None and not store.clear()
    store.save(CHOICE)
    assert store.load() == CHOICE and store.key == "t:aggregators"
    assert store.clear() and store.load() is None
    store.client.set(store.key, "[1, 2]")
    with pytest.raises(RoutingError, match="not an aggregator choice"):
        store.load()


def test_choice_from_the_probe():
    aggregator = Aggregator(by_domain={"math": "mathy"}, fallback="medic")
    choice = AggregatorChoice.from_probe(aggregator, {"math": {"mathy": 1.0}})
    assert (choice.by_domain, choice.fallback) == ({"math": "mathy"}, "medic")


def test_task_is_the_domain_of_the_best_weighted_expert():
    assert choose(decision("medic", "lawyer", weights=[0.3, 0.7])) == "lawyer"
    assert choose(decision("mathy")) == "mathy"


def test_removed_choice_falls_back_then_to_none():
    assert choose(decision("mathy"), live=("medic",)) == "medic"
    assert choose(decision("mathy"), live=("lawyer",)) is None
    assert choose_aggregator(decision("mathy"), None, str, bool) is None


def test_expert_without_domain_is_its_own_task():
    choice = AggregatorChoice(by_domain={"solo": "lawyer"}, fallback=None)
    assert choose_aggregator(decision("solo"), choice, lambda e: e, lambda e: True) == "lawyer"
    specs = {"solo": ExpertSpec(id="solo", model="org/x"),
             "m": ExpertSpec(id="m", model="org/x", domain="math")}
    domain_of = spec_domain(specs.__getitem__)
    assert [domain_of(e) for e in ("solo", "m", "gone")] == ["solo", "math", "gone"]


def test_stored_aggregators_reread_and_keep_the_last_good(store):
    follow = StoredAggregators(store, DOMAINS.__getitem__, lambda e: True, retry_s=0)
    assert follow.current()(decision("mathy")) is None  # nothing stored yet
    store.save(CHOICE)
    assert follow.current()(decision("mathy")) == "mathy"  # picked up without restart
    follow.store = AggregatorStore(connect("unix:///nonexistent/redis.sock"), namespace="t")
    assert follow.current()(decision("mathy")) == "mathy"  # Redis gone: last good kept
    follow.store = store
    store.clear()
    assert follow.current()(decision("mathy")) is None


def test_batch_router_sets_the_aggregator_on_fresh_and_cached_decisions(minilm):
    router = Router(minilm, {"skills": SkillsStrategy(minilm)}, default_strategy="skills",
                    cache=MemoryPatternCache())
    router.fit(text_table())
    chosen = {"name": "lawyer"}
    def route(items):
        return route_batch(router, items, aggregators=lambda: lambda d: chosen["name"])

    item = RouteQuery(QUERIES["mathy"], RouteOptions(k=1))
    first = route([item])[0]
    assert first.cache == "miss" and first.decision.aggregator == "lawyer"
    chosen["name"] = "medic"  # a new choice stored while serving
    again = route([item])[0]
    assert again.cache == "hit" and again.decision.aggregator == "medic"
    assert route_batch(router, [item])[0].decision.aggregator is None


def test_batch_job_follows_the_stored_choice(redis_url):
    from cluster.cli.batch import stored_chooser

    specs = {e: ExpertSpec(id=e, model="org/x", domain=DOMAINS[e]) for e in ("mathy", "medic")}
    assert stored_chooser(redis_url, "t", specs) is None  # none stored
    AggregatorStore(connect(redis_url), namespace="t").save(CHOICE)
    choose = stored_chooser(redis_url, "t", specs)
    assert choose(decision("mathy", "medic", weights=[0.9, 0.1])) == "mathy"
