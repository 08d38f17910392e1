"""Selection: top-k, cost penalty, seeded sampling, NaN fallback; options and decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from routing.errors import RoutingError
from routing.options import RouteOptions
from routing.selection import Decision, select
from routing.strategies.base import Scores

EXPERTS = ["big", "mid", "small"]


def _scores(*rows) -> Scores:
    return Scores(EXPERTS, np.array(rows, dtype=float), [{"why": i} for i in range(len(rows))])


def test_top_k_ranks_everyone_and_weights_the_chosen():
    (decision,) = select(["q"], _scores([0.9, 0.6, 0.3]), RouteOptions(k=2), "s")
    assert decision.experts == ["big", "mid"]
    assert decision.weights == pytest.approx([0.6, 0.4])
    assert [name for name, _ in decision.ranked] == EXPERTS
    assert decision.explanation["why"] == 0 and decision.strategy == "s"


def test_cost_penalty_lets_a_cheaper_expert_win():
    costs = {"big": 10.0, "mid": 3.0, "small": 0.0}
    rows = _scores([0.9, 0.8, 0.3])
    assert select(["q"], rows, RouteOptions(k=1), "s", costs)[0].experts == ["big"]
    assert select(["q"], rows, RouteOptions(k=1, cost_weight=0.5), "s", costs)[0].experts == ["mid"]
    assert select(["q"], rows, RouteOptions(k=1, cost_weight=5), "s", costs)[0].experts == ["small"]


def test_sampling_is_seeded_and_may_repeat_an_expert():
    rows = _scores([0.98, 0.01, 0.01])
    options = RouteOptions(k=3, sample=True, seed=4)
    first = select(["q"], rows, options, "s")[0]
    assert first.experts == select(["q"], rows, options, "s")[0].experts
    assert first.experts.count("big") >= 2  # drawn with replacement
    assert sum(first.weights) == pytest.approx(1.0)
    spread = {tuple(select(["q"], _scores([0.4, 0.3, 0.3]),
                           RouteOptions(k=3, sample=True, seed=s), "s")[0].experts)
              for s in range(10)}
    assert len(spread) > 1  # the seed matters


def test_all_nan_row_falls_back_to_the_prior():
    rows = _scores([np.nan, np.nan, np.nan], [0.1, np.nan, 0.5])
    first, second = select(["q1", "q2"], rows, RouteOptions(k=1), "s",
                           prior={"big": 0.2, "mid": 0.7, "small": 0.1})
    assert first.experts == ["mid"] and "fallback" in first.explanation
    assert second.experts == ["small"] and "fallback" not in second.explanation
    assert second.ranked[-1][0] == "mid" and np.isnan(second.ranked[-1][1])  # NaN last


def test_shape_mismatch_and_no_experts_are_errors():
    with pytest.raises(RoutingError, match="shape"):
        select(["a", "b"], _scores([0.1, 0.2, 0.3]), RouteOptions(), "s")
    with pytest.raises(RoutingError, match="knows no experts"):
        select(["a"], Scores([], np.zeros((1, 0)), [{}]), RouteOptions(), "s")


def test_decision_round_trips_through_json():
    (decision,) = select(["q"], _scores([0.5, np.nan, np.float32(0.25)]), RouteOptions(k=2), "s")
    decision.explanation["vec"] = np.arange(2)
    back = Decision.from_dict(json.loads(json.dumps(decision.to_dict())))
    assert back.experts == decision.experts and back.weights == decision.weights
    assert back.ranked[0] == ("big", 0.5) and np.isnan(back.ranked[-1][1])
    assert back.explanation["vec"] == [0, 1]
    with pytest.raises(RoutingError, match="not a routing decision"):
        Decision.from_dict({"query": "q"})


def test_model_string_options():
    options = RouteOptions.parse_model_string("conclave:k=2,strategy=skills,cost=0.2,sample=on,seed=3")
    assert options == RouteOptions(k=2, strategy="skills", cost_weight=0.2, sample=True, seed=3)
    assert RouteOptions.parse_model_string("conclave") == RouteOptions()
    given = RouteOptions.parse_model_string("conclave:aggregation=vote,k=4")
    assert given.given() == {"aggregation": "vote", "k": 4}  # only these override defaults
    for bad, words in [("conclave:x=1", "valid keys: aggregation, cascade_threshold, cost"), ("conclave:k=0", "k"),
                       ("conclave:k=two", "integer"), ("conclave:sample=maybe", "boolean"),
                       ("conclave:cost=-1", "cost_weight"), ("conclave:cost=inf", "finite"),
                       ("conclave:aggregation=mean", "vote"), ("conclave:seed=", "bad option"),
                       ("gpt-4o", "start with")]:
        with pytest.raises(RoutingError, match=words):
            RouteOptions.parse_model_string(bad)
