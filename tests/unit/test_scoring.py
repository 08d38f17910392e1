"""Answer scoring: multiple-choice letters, exact match, numeric match."""

from __future__ import annotations

import pytest

from routing.errors import RoutingError
from routing.scoring import extract_choice, score_answer


@pytest.mark.parametrize("text, letter", [
    ("Let's think step by step... The answer is (C).", "C"),
    ("the answer is b", "B"),
    ("Answer: D", "D"),
    ("C. Because the rate doubles", "C"),
    ("(A) is wrong, so the correct choice is (E)", "E"),
    ("B", "B"),
    ("I am not sure", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


@pytest.mark.parametrize("prediction, gold, metric, expected", [
    ("The answer is (C).", "C", "auto", 1.0),
    ("The answer is (C).", "D", "auto", 0.0),
    ("so the total is $1,234.00", "1234", "auto", 1.0),
    ("it is 3.14159", "3.1416", "numeric", 1.0),
    ("it is 3.14159", "3.15", "numeric", 0.0),
    ("x = 0.5", "0.5", "numeric", 1.0),
    ("The Eiffel Tower!", "eiffel tower", "auto", 1.0),
    ("Paris, France", "Paris", "exact", 0.0),
    ("nothing numeric", "7", "auto", 0.0),
])
def test_score_answer(prediction, gold, metric, expected):
    assert score_answer(prediction, gold, metric) == expected


def test_bad_metric_or_gold():
    with pytest.raises(RoutingError, match="valid: auto, mc, exact, numeric"):
        score_answer("a", "b", "fuzzy")
    with pytest.raises(RoutingError, match="empty"):
        score_answer("a", " ")
    with pytest.raises(RoutingError, match="not a number"):
        score_answer("3", "three", "numeric")
