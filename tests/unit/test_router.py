"""The router façade on the hand-made text table: one encoder pass, strategies, cache,
experts joining and leaving, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from text_tables import QUERIES, text_table

from cluster.config import ConclaveConfig
from experts.spec import ExpertSpec
from routing.cache.memory import MemoryPatternCache
from routing.errors import RoutingError
from routing.options import RouteOptions
from routing.router import Router, build_router, outcomes_from_specs
from routing.strategies.glider import GliderStrategy
from routing.strategies.skills import SkillsStrategy

COSTS = {"mathy": 1.0, "lawyer": 5.0, "medic": 2.0}


def _spec(expert: str, **fields) -> ExpertSpec:
    return ExpertSpec(id=expert, model="org/tiny", cost=COSTS.get(expert, 0.0), **fields)


def _router(minilm, cache=None) -> Router:
    router = Router(minilm, {"skills": SkillsStrategy(minilm), "glider": GliderStrategy(minilm)},
                    default_strategy="skills", costs=COSTS, cache=cache)
    router.fit(text_table())
    return router


@pytest.fixture(scope="module")
def router(minilm) -> Router:
    return _router(minilm)


@pytest.mark.parametrize("strategy", ["skills", "glider"])
def test_routes_each_query_to_its_expert(router, strategy):
    decisions = router.route(list(QUERIES.values()), RouteOptions(k=2, strategy=strategy))
    assert [d.experts[0] for d in decisions] == list(QUERIES)
    assert all(d.strategy == strategy and len(d.ranked) == 3 for d in decisions)
    assert all(len(d.experts) == 2 and sum(d.weights) == pytest.approx(1.0) for d in decisions)


def test_cost_weight_moves_to_a_cheaper_expert(router):
    query = [QUERIES["lawyer"]]
    assert router.route(query, RouteOptions(k=1))[0].experts == ["lawyer"]
    assert router.route(query, RouteOptions(k=1, cost_weight=10))[0].experts == ["mathy"]


def test_one_encoder_pass_per_batch(router, monkeypatch):
    calls = []
    original = router.encoder.encode
    monkeypatch.setattr(router.encoder, "encode", lambda texts: calls.append(len(texts))
                        or original(texts))
    router.route(list(QUERIES.values()), RouteOptions(strategy="glider"))
    assert calls == [3]


def test_add_and_remove_expert_change_decisions(minilm):
    router = _router(minilm)
    table = text_table()
    judge = text_table(["lawyer"])
    judge.experts = ["judge"]  # same answers as lawyer, and far cheaper
    router.add_expert("judge", judge, cost=0.0)
    assert "judge" in router.experts
    options = RouteOptions(k=1, cost_weight=0.5)
    assert router.route([QUERIES["lawyer"]], options)[0].experts == ["judge"]
    router.remove_expert("judge")
    assert "judge" not in router.experts
    for name in ("skills", "glider"):
        assert "judge" not in router.strategies[name].experts
    assert router.route([QUERIES["lawyer"]], options)[0].experts == ["lawyer"]
    with pytest.raises(RoutingError, match="unknown expert 'judge'"):
        router.remove_expert("judge")
    with pytest.raises(RoutingError, match="no column for expert 'nobody'"):
        router.add_expert("nobody", table)


def test_cache_is_used_only_under_the_same_options(minilm):
    cache = MemoryPatternCache()
    router = _router(minilm, cache=cache)
    query = [QUERIES["medic"]]
    first = router.route(query)[0]
    again = router.route(query)[0]
    assert not first.cached and again.cached and again.experts == first.experts
    other = router.route(query, RouteOptions(strategy="glider"))[0]
    assert not other.cached and other.strategy == "glider"
    explicit = router.route(query, RouteOptions(strategy="skills"))[0]  # the default, named
    assert explicit.cached


def test_k2_then_k3_then_k2_the_second_k2_is_a_hit_for_its_own_pattern(minilm):
    cache = MemoryPatternCache()
    router = _router(minilm, cache=cache)
    query = [QUERIES["medic"]]
    first, three, second = (router.route(query, RouteOptions(k=k))[0] for k in (2, 3, 2))
    assert not first.cached and not three.cached and len(three.experts) == 3
    assert second.cached and second.experts == first.experts
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 2  # no hit thrown away


def test_no_skill_matched_falls_back_to_the_prior(minilm):
    router = _router(minilm)
    router.strategies["skills"].skill_floor = 1.01  # every query scores NaN
    decision = router.route(["anything at all"], RouteOptions(k=1))[0]
    assert "fallback" in decision.explanation and decision.experts


def test_bad_inputs(router):
    with pytest.raises(RoutingError, match="empty"):
        router.route(["fine", " "])
    with pytest.raises(ValueError, match="unknown routing strategy 'nope'; valid: contrastive, glider, hybrid"):
        RouteOptions(strategy="nope")  # not registered: refused when the options are made
    with pytest.raises(RoutingError, match="unknown routing strategy 'knn'; valid: glider, skills"):
        router.route(["q"], RouteOptions(strategy="knn"))  # registered, not in this router
    assert router.route([]) == []


def test_build_router_from_spec_examples(minilm):
    from text_tables import QUESTIONS

    specs = [_spec("mathy", examples=QUESTIONS["math"], description="Calculus."),
             _spec("lawyer", examples=QUESTIONS["law"], description="Contract law."),
             _spec("medic", examples=QUESTIONS["health"], description="Medicine.")]
    table = outcomes_from_specs(specs)
    assert table.scores.sum(axis=1).tolist() == [1.0] * len(table)
    config = ConclaveConfig.model_validate({"routing": {"strategy": "glider"}})
    router = build_router(config, specs, None, encoder=minilm)
    assert router.default_strategy == "glider" and router.costs["lawyer"] == 5.0
    decisions = router.route(list(QUERIES.values()), RouteOptions(k=1))
    assert [d.experts[0] for d in decisions] == list(QUERIES)
    for strategy in router.strategies.values():
        assert sorted(strategy.experts) == ["lawyer", "mathy", "medic"]


def test_build_router_rejects_outcome_columns_without_a_spec(minilm):
    specs = [_spec("mathy"), _spec("lawyer")]
    with pytest.raises(RoutingError, match=r"column\(s\) \['medic'\] with no expert spec"):
        build_router(ConclaveConfig(), specs, text_table(), encoder=minilm)
    with pytest.raises(RoutingError, match="no outcome data"):
        build_router(ConclaveConfig(), specs, None, encoder=minilm)


def test_strategy_that_cannot_fit_is_reported(minilm):
    table = text_table()
    table.scores[:] = np.float32(0.0)  # nobody right: glider has no centroid for anyone
    router = Router(minilm, {"skills": SkillsStrategy(minilm), "glider": GliderStrategy(minilm)},
                    default_strategy="skills")
    router.fit(table)
    with pytest.raises(RoutingError, match="'glider' is unavailable: .*no task instruction"):
        router.route(["q"], RouteOptions(strategy="glider"))
