"""The contrastive (RouterDC-style) strategy on the hand-made two-cluster table: it learns
the clusters' experts, adds and removes experts without touching the others, saves and loads
exactly, and refuses bad input. A few training steps on tiny data only."""

from __future__ import annotations

import numpy as np
import pytest

from routing.errors import RoutingError
from routing.outcomes import OutcomeTable
from routing.strategies import StrategyContext, make_strategy
from tests.unit.strategy_tables import cluster, newcomer, queries, two_cluster_table

TINY = {"dim": 16, "hidden": 32, "max_steps": 60, "eval_every": 20, "batch_size": 32,
        "clusters": 2}


@pytest.fixture(scope="module")
def fitted():
    table, emb = two_cluster_table(30)
    strategy = make_strategy("contrastive", TINY)
    strategy.fit(table, emb)
    return strategy


def _fresh(fitted):
    """A copy of the fitted strategy that a test may change."""
    strategy = make_strategy("contrastive", TINY)
    strategy._model, strategy._experts = fitted._model, fitted.experts
    strategy._vectors = fitted._vectors.clone()
    return strategy


def test_each_cluster_is_routed_to_its_expert(fitted):
    texts, emb = queries()
    scores = fitted.score(texts[:2], emb[:2])
    best = [scores.experts[j] for j in np.argmax(scores.values, axis=1)]
    assert best == ["alpha", "beta"]
    assert ((scores.values > 0) & (scores.values < 1)).all()  # calibrated probabilities
    assert fitted.train_log.curve and fitted.train_log.best_step > 0


def test_add_expert_changes_no_other_score_and_routes_its_cluster(fitted):
    strategy = _fresh(fitted)
    texts, emb = queries()
    before = strategy.score(texts, emb).values
    table, new_emb = newcomer(24)
    math = cluster(0, 12, 7)  # delta is wrong on math questions
    mixed = OutcomeTable(ids=[*table.ids, *(f"m{i}" for i in range(12))],
                         texts=[*table.texts, *(f"math {i}" for i in range(12))],
                         domains=["chemistry"] * 24 + ["math"] * 12, experts=["delta"],
                         scores=np.r_[np.ones(24), np.zeros(12)].astype(np.float32)[:, None])
    strategy.add_expert("delta", mixed, np.concatenate([new_emb, math]))
    after = strategy.score(texts, emb)
    assert after.experts == ["alpha", "beta", "gamma", "delta"]
    assert np.array_equal(after.values[:, :3], before)
    assert after.experts[int(np.argmax(after.values[2]))] == "delta"  # the chemistry query
    assert after.values[0, 3] < after.values[0, 0]  # not on math
    strategy.remove_expert("delta")
    assert strategy.experts == ["alpha", "beta", "gamma"]
    assert np.array_equal(strategy.score(texts, emb).values, before)
    with pytest.raises(RoutingError, match="unknown expert 'delta'"):
        strategy.remove_expert("delta")


def test_an_example_only_expert_gets_its_examples_direction(fitted):
    strategy = _fresh(fitted)
    table, emb = newcomer(5)  # example questions: all counted right
    strategy.add_expert("delta", table, emb)
    texts, q = queries()
    scores = strategy.score(texts, q)
    assert scores.experts[int(np.argmax(scores.values[2]))] == "delta"
    few, few_emb = newcomer(2)
    with pytest.raises(RoutingError, match="needs at least 3"):
        strategy.add_expert("eps", few.__class__(**{**few.__dict__, "experts": ["eps"]}),
                            few_emb)


def test_too_few_outcomes_for_an_expert_are_refused_with_the_number_needed(fitted):
    strategy = _fresh(fitted)
    table, emb = newcomer(10)
    table.scores[:5] = 0.0
    with pytest.raises(RoutingError, match="10 questions; its embedding needs at least 20"):
        strategy.add_expert("delta", table, emb)


def test_save_and_load_give_identical_scores_and_refuse_mismatches(fitted, tmp_path):
    path = fitted.save(tmp_path / "router.safetensors")
    loaded = make_strategy("contrastive")
    loaded.load(tmp_path, experts=["gamma", "beta", "alpha"])  # a folder holds router.safetensors
    texts, emb = queries()
    assert np.array_equal(loaded.score(texts, emb).values, fitted.score(texts, emb).values)
    with pytest.raises(RoutingError, match=r"other experts: missing \['delta'\], unknown here "
                                           r"\['gamma'\]"):
        loaded.load(path, experts=["alpha", "beta", "delta"])

    class OtherEncoder:
        name = "e5-large"

    other = make_strategy("contrastive", context=StrategyContext(OtherEncoder()))
    with pytest.raises(RoutingError, match="encoder 'all-MiniLM-L6-v2'.*'e5-large'"):
        other.load(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(RoutingError, match="not a safetensors file"):
        other.load(tmp_path / "junk.safetensors")
    # fit() with weights loads instead of training, checking the table's experts.
    table, tab_emb = two_cluster_table(30)
    by_file = make_strategy("contrastive", {"weights": str(path)})
    by_file.fit(table, tab_emb)
    assert np.array_equal(by_file.score(texts, emb).values, fitted.score(texts, emb).values)


def test_bad_input_is_refused():
    table, emb = two_cluster_table(5)
    strategy = make_strategy("contrastive", TINY)
    with pytest.raises(RoutingError, match="at least 20 questions and 2 experts; got 10"):
        strategy.fit(table, emb)
    with pytest.raises(RoutingError, match="not fitted"):
        strategy.score(["q"], emb[:1])
    with pytest.raises(RoutingError, match="needs a trained router"):
        strategy.add_expert("alpha", table.with_experts(["alpha"]), emb)
    with pytest.raises(RoutingError, match="bad option"):
        make_strategy("contrastive", {"steps": 3})


def test_fractional_outcomes_train(fitted):
    table, emb = two_cluster_table(30)
    table.scores[:] = np.clip(table.scores * 0.8 + 0.1, 0, 1)  # pass rates, not 0/1
    strategy = make_strategy("contrastive", TINY)
    strategy.fit(table, emb)
    texts, q = queries()
    values = strategy.score(texts[:2], q[:2]).values
    assert list(np.argmax(values, axis=1)) == [0, 1]
