"""The strategy contract (routing/strategies/base.py), run over every registered strategy:
declared needs, options checked, fit, score, experts joining and leaving, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from text_tables import QUERIES, text_table

from routing.errors import RoutingError
from routing.strategies import STRATEGIES, check_strategy, make_strategy
from routing.strategies.base import RoutingStrategy, StrategyContext

INSTRUCTIONS = {"mathy": "Solve calculus problems: derivatives and integrals.",
                "lawyer": "Answer questions on contract law and court remedies.",
                "medic": "Diagnose patients and recommend a clinical treatment."}
# Fast settings where the defaults search a lot (the hybrid's weights by CV).
FAST = {"hybrid": {"weights": {"knn": 0.5, "pilots": 0.5}}}


@pytest.fixture(scope="module")
def fitted(minilm):
    """name → a fresh strategy fitted on mathy and lawyer (called per test)."""
    table = text_table(["mathy", "lawyer"])
    embeddings = minilm.encode(table.texts)

    def make(name: str) -> RoutingStrategy:
        strategy = make_strategy(name, FAST.get(name), StrategyContext(minilm, INSTRUCTIONS))
        strategy.fit(table, embeddings)
        return strategy

    return make


@pytest.fixture(scope="module")
def queries(minilm):
    texts = [QUERIES["mathy"], QUERIES["lawyer"], QUERIES["medic"]]
    return texts, minilm.encode(texts)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_declares_its_name_and_needs(name):
    cls = STRATEGIES[name]
    assert issubclass(cls, RoutingStrategy) and cls.name == name
    assert set(cls.needs) <= set(StrategyContext.__dataclass_fields__)
    check_strategy(name, FAST.get(name))  # builds with the defaults, no context
    with pytest.raises(RoutingError, match="bad options"):
        check_strategy(name, {"no_such_option": 1})
    for need in cls.needs:
        with pytest.raises(RoutingError, match="come from the router"):
            check_strategy(name, {need: None})


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_fit_then_score(name, fitted, queries):
    strategy = fitted(name)
    texts, embeddings = queries
    scores = strategy.score(texts, embeddings)
    assert strategy.experts == scores.experts == ["mathy", "lawyer"]
    assert scores.values.shape == (3, 2) and len(scores.explanations) == 3
    assert not np.isinf(scores.values).any()
    assert _best(scores, 0) == "mathy" and _best(scores, 1) == "lawyer"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_experts_join_and_leave_without_refitting(name, fitted, queries, minilm):
    strategy = fitted(name)
    texts, embeddings = queries
    column = text_table(["medic"])
    strategy.add_expert("medic", column, minilm.encode(column.texts))
    scores = strategy.score(texts, embeddings)
    assert sorted(scores.experts) == ["lawyer", "mathy", "medic"]
    assert scores.values.shape == (3, 3) and _best(scores, 2) == "medic"
    strategy.remove_expert("medic")
    after = strategy.score(texts, embeddings)
    assert after.experts == ["mathy", "lawyer"] and after.values.shape == (3, 2)
    with pytest.raises(RoutingError):
        strategy.remove_expert("medic")


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_bad_input_is_a_routing_error(name, fitted, queries, minilm):
    texts, embeddings = queries
    fresh = make_strategy(name, FAST.get(name), StrategyContext(minilm, INSTRUCTIONS))
    with pytest.raises(RoutingError):
        fresh.score(texts, embeddings)  # nothing fitted, no experts
    table = text_table(["mathy"])
    with pytest.raises(RoutingError):
        fresh.fit(table, minilm.encode(table.texts)[:3])  # one embedding row per question
    strategy = fitted(name)
    with pytest.raises(RoutingError):
        strategy.score(["   "], embeddings[:1])
    with pytest.raises(RoutingError):
        strategy.score(texts, embeddings[:1])
    with pytest.raises(RoutingError):
        strategy.add_expert("nobody", table, minilm.encode(table.texts))


def _best(scores, row: int) -> str:
    values = np.nan_to_num(scores.values[row], nan=-np.inf)
    return scores.experts[int(np.argmax(values))]
