"""Hybrid strategy: weights fitted by cross-validation pick the component that routes well."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_tables import newcomer, queries, two_cluster_table

from routing.errors import RoutingError
from routing.strategies import make_strategy
from routing.strategies.hybrid import HybridStrategy, simplex, standardise


def test_simplex_and_standardise():
    combos = simplex(2, 0.25)
    assert len(combos) == 5 and all(sum(c) == pytest.approx(1.0) for c in combos)
    z = standardise(np.array([[1.0, 2.0, np.nan], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(z, [[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_fitted_weights_route_each_cluster_to_its_expert():
    strategy = make_strategy("hybrid", {"options": {"knn": {"k": 5}}, "step": 0.5})
    assert isinstance(strategy, HybridStrategy)
    strategy.fit(*two_cluster_table())
    assert sum(strategy.weights.values()) == pytest.approx(1.0)
    assert len(strategy.cv_trials) == 3
    texts, emb = queries()
    scores = strategy.score(texts[:2], emb[:2])
    assert scores.values[0].argmax() == 0 and scores.values[1].argmax() == 1
    assert set(scores.explanations[0]["components"]) == {"knn", "pilots"}


def test_add_and_remove_reach_every_component():
    strategy = HybridStrategy(weights={"knn": 0.5, "pilots": 0.5}, options={"knn": {"k": 5}})
    strategy.fit(*two_cluster_table())
    texts, emb = queries()
    before = strategy.score(texts, emb).values
    strategy.add_expert("delta", *newcomer())
    assert strategy.experts[-1] == "delta"
    assert strategy.score(texts, emb).values[2].argmax() == 3
    strategy.remove_expert("delta")
    np.testing.assert_allclose(strategy.score(texts, emb).values, before, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(RoutingError, match="distinct"):
        HybridStrategy(components=("knn", "knn"))
    with pytest.raises(RoutingError, match="itself"):
        HybridStrategy(components=("knn", "hybrid"))
    with pytest.raises(RoutingError, match="unknown routing strategy"):
        HybridStrategy(components=("knn", "nope"), weights={"knn": 1, "nope": 0}).fit(
            *two_cluster_table())
    texts, emb = queries()
    with pytest.raises(RoutingError, match="not fitted"):
        HybridStrategy().score(texts, emb)
