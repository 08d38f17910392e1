"""kNN strategy on a hand-made outcome table where the right routing is known."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_tables import newcomer, queries, two_cluster_table

from routing.errors import RoutingError
from routing.strategies.knn import KNNStrategy


def _fitted(**options) -> KNNStrategy:
    strategy = KNNStrategy(k=10, **options)
    strategy.fit(*two_cluster_table())
    return strategy


def test_routes_each_cluster_to_its_expert():
    texts, emb = queries()
    scores = _fitted().score(texts[:2], emb[:2])
    assert scores.experts == ["alpha", "beta", "gamma"]
    assert scores.values[0].argmax() == 0 and scores.values[1].argmax() == 1
    assert scores.values[0, 0] > 0.9 and scores.values[0, 1] < 0.1  # calibrated, near 1 and 0
    assert len(scores.explanations[0]["neighbours"]) == 5
    assert scores.explanations[0]["neighbours"][0]["id"].startswith("q")


def test_prior_pulls_thin_evidence_to_the_expert_mean():
    texts, emb = queries()
    sharp = _fitted(prior_weight=0.0).score(texts[:1], emb[:1]).values[0, 0]
    shrunk = _fitted(prior_weight=1.0).score(texts[:1], emb[:1]).values[0, 0]
    assert sharp == pytest.approx(1.0) and 0.5 < shrunk < 1.0  # alpha's mean is 0.5


def test_add_expert_changes_decisions_and_remove_leaves_no_stale_vector():
    strategy = _fitted()
    texts, emb = queries()
    before = strategy.score(texts, emb)
    assert before.values.shape == (3, 3)
    strategy.add_expert("delta", *newcomer())
    after = strategy.score(texts, emb)
    assert after.experts[-1] == "delta" and np.nanargmax(after.values[2]) == 3
    assert len(strategy._index) == 60
    strategy.remove_expert("delta")
    assert len(strategy._index) == 40  # delta's questions had no other result: vectors gone
    assert not any(i.startswith("new") for i in strategy._index.ids)
    np.testing.assert_allclose(strategy.score(texts, emb).values, before.values)


def test_removing_every_expert_empties_the_index():
    strategy = _fitted()
    for expert in ["alpha", "beta", "gamma"]:
        strategy.remove_expert(expert)
    assert len(strategy._index) == 0 and strategy.experts == []


def test_bad_inputs_raise_clear_errors():
    texts, emb = queries()
    with pytest.raises(RoutingError, match="not fitted"):
        KNNStrategy().score(texts, emb)
    strategy = _fitted()
    with pytest.raises(RoutingError, match="empty query"):
        strategy.score([""], emb[:1])
    with pytest.raises(RoutingError, match="unknown expert"):
        strategy.remove_expert("nobody")
    table, emb_train = two_cluster_table()
    with pytest.raises(RoutingError, match="one embedding row per question"):
        KNNStrategy().fit(table, emb_train[:5])
    with pytest.raises(RoutingError, match="no column"):
        strategy.add_expert("zeta", table, emb_train)
    with pytest.raises(RoutingError):
        KNNStrategy(k=0)
