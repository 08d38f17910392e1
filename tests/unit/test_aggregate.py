"""Aggregator: vote and its ties, </think> stripping, the synthesis prompt, modes, and the
probe that picks an aggregator per domain."""

from __future__ import annotations

import numpy as np
import pytest

from routing.aggregate import (
    Aggregator,
    build_probes,
    is_multiple_choice,
    select_aggregators,
    strip_thinking,
    synthesis_prompt,
    vote,
)
from routing.errors import RoutingError
from routing.outcomes import OutcomeTable
from routing.selection import Decision

MC = "Which is a prime?\nA) 4\nB) 6\nC) 7\nD) 9"


def decision(experts, weights, aggregator=None) -> Decision:
    return Decision(query="q", experts=list(experts), weights=list(weights), strategy="knn",
                    ranked=[], explanation={}, aggregator=aggregator)


def test_strip_thinking():
    assert strip_thinking("<think>maybe B</think>\nThe answer is C") == "The answer is C"
    assert strip_thinking("<think>a</think>x</think> final ") == "final"
    assert strip_thinking("<think>never closed, ran out of tokens") == ""
    assert strip_thinking("  plain answer ") == "plain answer"


def test_vote_majority_and_ties_to_highest_weight():
    assert vote(["The answer is B", "(C)", "answer: b"], [0.5, 0.3, 0.2]) == ("B", 0)
    # one vote each: the highest-weighted expert's letter wins
    assert vote(["A", "The answer is (C)", "B"], [0.2, 0.5, 0.3]) == ("C", 1)
    # 2-2 tie between A and D: D has the heaviest single voter
    assert vote(["A", "D", "A", "D"], [0.1, 0.4, 0.2, 0.3]) == ("D", 1)
    # letters inside reasoning do not count
    assert vote(["<think>A</think>The answer is B", "B", "A"], [0.3, 0.3, 0.4]) == ("B", 0)
    assert vote(["no idea", "none"], [0.2, 0.8]) == (None, 1)
    with pytest.raises(RoutingError, match="one weight per response"):
        vote(["A"], [0.5, 0.5])


def test_synthesis_prompt_has_every_response_without_thinking_and_the_question():
    responses = ["<think>secret chain</think>Paris is the capital.", "It is Paris.", "Lyon"]
    content = synthesis_prompt("What is the capital of France?", responses)[0]["content"]
    for text in ("Paris is the capital.", "It is Paris.", "Lyon",
                 "What is the capital of France?"):
        assert text in content
    assert "secret chain" not in content and "<think>" not in content


def test_modes_and_who_aggregates():
    agg = Aggregator(by_domain={"math": "m"}, fallback="f")
    three = decision(["a", "b", "c"], [0.2, 0.5, 0.3])
    assert is_multiple_choice(MC) and not is_multiple_choice("What is 2+2? A fine day.")
    assert agg.mode_for(MC, three) == "vote"
    assert agg.mode_for("Explain gravity.", three) == "synthesis"
    assert agg.mode_for("Explain gravity.", decision(["a", "a"], [0.5, 0.5])) == "single"
    assert agg.assign(["Explain", MC, "Explain"], [three, three, three],
                      ["math", "math", "law"]) == ["m", None, "f"]
    assert Aggregator().aggregator_for(three) == "b"  # no fallback: best-weighted expert
    assert agg.aggregator_for(decision(["a", "b"], [0.5, 0.5], aggregator="z")) == "z"
    with pytest.raises(RoutingError, match="unknown aggregation mode"):
        Aggregator(mode="mean")


def test_finish_per_mode():
    three = decision(["a", "b", "c"], [0.2, 0.5, 0.3])
    responses = ["The answer is A", "<think>hm</think>The answer is C", "(C)"]
    auto = Aggregator()
    assert auto.finish(MC, three, responses).answer == "The answer is C"
    done = auto.finish("Explain.", three, responses, "<think>x</think>Synth", "b")
    assert (done.answer, done.mode, done.aggregator) == ("Synth", "synthesis", "b")
    best = Aggregator(mode="best").finish("Explain.", three, responses)
    assert (best.answer, best.mode) == ("The answer is C", "best")
    single = auto.finish("Explain.", decision(["a"], [1.0]), ["only <x>"])
    assert (single.answer, single.mode) == ("only <x>", "single")


def outcomes() -> OutcomeTable:
    """Two domains, four experts; per question one right and several distinct wrong."""
    ids = [f"q{i}" for i in range(6)]
    gold = ["A", "B", "C", "D", "A", "B"]
    predictions, scores = [], []
    for g in gold:
        wrong = [x for x in "ABCD" if x != g]
        predictions.append([g, wrong[0], wrong[1], wrong[2]])
        scores.append([1, 0, 0, 0])
    return OutcomeTable(ids=ids, texts=[f"question {i}" for i in range(6)],
                        domains=["math"] * 3 + ["law"] * 3, experts=["e1", "e2", "e3", "e4"],
                        scores=np.array(scores, dtype=np.float32),
                        predictions=np.array(predictions, dtype=object), answers=gold)


def test_probe_picks_the_best_aggregator_per_domain():
    table = outcomes()
    probes = build_probes(table, per_domain=2, seed=1)
    assert sorted(p.domain for p in probes) == ["law", "law", "math", "math"]
    assert all(len(p.responses) == 3 and p.gold in p.responses for p in probes)
    gold = dict(zip(table.texts, table.answers, strict=True))

    def answer(candidate, prompts):
        # "e3" is right in math only, "e4" in law only, "e2" never
        outs = []
        for prompt in prompts:
            question = prompt[0]["content"].rsplit("Question:\n", 1)[1]
            math = int(question.split()[-1]) < 3
            right = (candidate == "e3" and math) or (candidate == "e4" and not math)
            outs.append(f"The answer is {gold[question] if right else 'J'}")
        return outs

    agg, accuracy = select_aggregators(table, ["e2", "e3", "e4"], answer, per_domain=2)
    assert agg.by_domain == {"math": "e3", "law": "e4"}
    assert accuracy["math"] == {"e2": 0.0, "e3": 1.0, "e4": 0.0}
    assert agg.fallback in {"e2", "e3", "e4"}
    assert select_aggregators(table, ["e1", "e2"], lambda c, p: ["x"] * len(p))[0].fallback == "e1"
    with pytest.raises(RoutingError, match="predictions"):
        build_probes(OutcomeTable(ids=["q"], texts=["t"], domains=["d"], experts=["e1"],
                                  scores=np.ones((1, 1), np.float32)))
