"""Pilot (RouterRetriever) strategy on a hand-made outcome table."""

from __future__ import annotations

import numpy as np
import pytest
from strategy_tables import newcomer, queries, two_cluster_table

from routing.errors import RoutingError
from routing.strategies.pilots import PilotStrategy


@pytest.mark.parametrize("mode", ["mean", "max"])
def test_routes_each_cluster_to_its_expert(mode):
    strategy = PilotStrategy(mode=mode)
    strategy.fit(*two_cluster_table())
    texts, emb = queries()
    scores = strategy.score(texts[:2], emb[:2])
    assert np.isnan(scores.values[:, 2]).all()  # gamma is never the best: no pilot
    values = np.nan_to_num(scores.values, nan=-1.0)
    assert values[0].argmax() == 0 and values[1].argmax() == 1
    assert scores.explanations[0]["pilots"][0]["pilot"] == "alpha::math"


def test_pilots_are_one_per_domain_and_expert_that_wins_there():
    strategy = PilotStrategy()
    strategy.fit(*two_cluster_table())
    assert sorted(strategy._index.ids) == ["alpha::math", "beta::law"]


def test_add_and_remove_expert_keep_the_index_exact():
    strategy = PilotStrategy()
    strategy.fit(*two_cluster_table())
    texts, emb = queries()
    before = strategy.score(texts, emb).values
    strategy.add_expert("delta", *newcomer())
    after = strategy.score(texts, emb)
    assert np.nanargmax(after.values[2]) == 3  # the chemistry query now goes to delta
    assert "delta::chemistry" in strategy._index.ids
    strategy.remove_expert("delta")
    assert not any(i.startswith("delta") for i in strategy._index.ids)
    np.testing.assert_allclose(strategy.score(texts, emb).values, before)


def test_bad_inputs_raise_clear_errors():
    texts, emb = queries()
    with pytest.raises(RoutingError, match="not fitted"):
        PilotStrategy().score(texts, emb)
    with pytest.raises(RoutingError, match="mode"):
        PilotStrategy(mode="median")
    strategy = PilotStrategy()
    strategy.fit(*two_cluster_table())
    with pytest.raises(RoutingError, match="unknown expert"):
        strategy.remove_expert("nobody")
