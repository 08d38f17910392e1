"""kNN keeps each expert's prior (its mean validation score) between queries instead of
recomputing it over every stored question per call (35 ms at 1M rows,
docs/routing-scale.md); every change to the outcomes must refresh it."""

from __future__ import annotations

import numpy as np
from strategy_tables import newcomer, queries, two_cluster_table

from routing.strategies.knn import KNNStrategy


def _fresh(table, emb) -> KNNStrategy:
    strategy = KNNStrategy(k=10, prior_weight=1.0)
    strategy.fit(table, emb)
    return strategy


def test_cached_prior_follows_every_change():
    table, emb = two_cluster_table()
    texts, asked = queries()
    strategy = _fresh(table, emb)
    strategy.score(texts, asked)  # computes and keeps the prior
    strategy.add_expert("delta", *newcomer())
    with_delta = _fresh(table, emb)
    with_delta.add_expert("delta", *newcomer())
    np.testing.assert_allclose(strategy.score(texts, asked).values,
                               with_delta.score(texts, asked).values)
    strategy.remove_expert("alpha")
    strategy.remove_expert("delta")
    want = _fresh(table.with_experts(["beta", "gamma"]), emb)
    np.testing.assert_allclose(strategy.score(texts, asked).values,
                               want.score(texts, asked).values, atol=1e-6)


def test_prior_is_computed_once_between_changes(monkeypatch):
    table, emb = two_cluster_table()
    texts, asked = queries()
    strategy = _fresh(table, emb)
    calls = []
    import routing.strategies.knn as knn

    monkeypatch.setattr(knn, "column_means", lambda s: calls.append(1) or np.nanmean(s, 0))
    for _ in range(3):
        strategy.score(texts, asked)
    assert len(calls) == 1
