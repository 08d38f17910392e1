"""An expert added live from its example questions is routed to for its own questions only,
as if it had been there at start (it used to score 1.0 wherever its few examples were among
a query's neighbours, and took every query)."""

from __future__ import annotations

import pytest

from cluster.config import parse_config
from experts.spec import ExpertSpec
from routing.options import RouteOptions
from routing.router import build_router, example_outcomes

EXAMPLES = {
    "roman": ["Write 12 in Roman numerals.", "What is 340 as a Roman numeral?",
              "Convert 77 to Roman numerals."],
    "units": ["Convert 5 kilometers to meters.", "How many grams are in 8 kilograms?",
              "40 liters is how many milliliters?"],
    "general": ["What is the capital of France?", "Why is the sky blue?",
                "Write a haiku about the sea."],
    "isodate": ["Rewrite the date March 5, 2001 in ISO format (YYYY-MM-DD).",
                "What is July 9, 1977 in YYYY-MM-DD format?",
                "What is May 30, 2040 in YYYY-MM-DD format?"],
}
QUESTIONS = {"roman": "Convert 945 to Roman numerals.",
             "units": "How many meters are in 31 kilometers?",
             "general": "What is the capital of Spain?",
             "isodate": "What is January 2, 1999 in YYYY-MM-DD format?"}


def spec(expert_id: str) -> ExpertSpec:
    return ExpertSpec(id=expert_id, model="org/model", examples=EXAMPLES[expert_id])


@pytest.mark.parametrize("strategy", ["knn", "pilots"])
def test_a_live_added_expert_takes_only_its_own_questions(minilm, strategy):
    config = parse_config({"routing": {"strategy": strategy, "k": 1}})
    start = [spec(name) for name in ("roman", "units", "general")]
    router = build_router(config, start, None, encoder=minilm)
    new = spec("isodate")
    router.add_expert("isodate", example_outcomes(new, start))
    decisions = router.route(list(QUESTIONS.values()), RouteOptions(k=1))
    assert [d.experts[0] for d in decisions] == list(QUESTIONS)
