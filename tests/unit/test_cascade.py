"""k: cascade (cluster/panel/cascade.py) with plain async experts: an unsure answer goes on to the
next expert, a sure one stops there, the kept answer is the most confident; an expert without
logprobs is a 400 naming it; a failed expert is skipped."""

from __future__ import annotations

import asyncio

import pytest

from cluster.http.errors import ApiError
from cluster.panel.cascade import confidence, run_cascade
from cluster.panel.panel import ExpertClient
from cluster.serve.messages import ExpertReply
from experts.engine import GenerationParams
from experts.errors import UnsupportedFeatureError
from routing.selection import Decision

SURE = {"alpha": -2.0, "beta": -0.1, "gamma": -1.0}  # each expert's mean token logprob


def _client(calls: list, no_logprobs=(), failing=()):
    async def call(expert, prompt, params, sink=None):
        calls.append((expert, params.logprobs))
        if expert in failing:
            raise RuntimeError("down")
        if expert in no_logprobs:
            raise ApiError(400, str(UnsupportedFeatureError(
                "the replay engine does not support logprobs")))
        steps = [{"token": "x", "logprob": SURE[expert]}] * 3
        return ExpertReply(text=f"from {expert}", prompt_tokens=1, completion_tokens=3,
                           logprobs=steps)
    return ExpertClient(call, 5.0)


def _run(client, threshold):
    decision = Decision(query="q", experts=["alpha", "beta", "gamma"], weights=[1 / 3] * 3,
                        strategy="knn", ranked=[("alpha", 3), ("beta", 2), ("gamma", 1)],
                        explanation={})
    return asyncio.run(run_cascade(client, decision, "q", GenerationParams(), threshold, lambda e: True))


def test_unsure_answers_escalate_until_a_sure_one():
    calls = []
    run = _run(_client(calls), threshold=-0.5)
    assert [e for e, _ in calls] == ["alpha", "beta"]  # alpha unsure (−2), beta sure (−0.1)
    assert all(lp == 0 for _, lp in calls)  # logprobs of the chosen tokens were asked for
    assert run.answers[run.kept].expert == "beta"


def test_a_sure_first_answer_asks_nobody_else():
    calls = []
    run = _run(_client(calls), threshold=-3.0)
    assert [e for e, _ in calls] == ["alpha"] and run.kept == 0


def test_when_none_is_sure_the_most_confident_is_kept():
    calls = []
    run = _run(_client(calls), threshold=0.0)
    assert [e for e, _ in calls] == ["alpha", "beta", "gamma"]
    assert [s.expert for s in run.steps() if s.kept] == ["beta"]


def test_an_expert_without_logprobs_is_a_400_naming_it():
    with pytest.raises(ApiError, match="'alpha' cannot give it") as err:
        _run(_client([], no_logprobs={"alpha"}), threshold=-0.5)
    assert err.value.status == 400


def test_a_failed_expert_is_skipped_and_recorded():
    calls = []
    run = _run(_client(calls, failing={"alpha"}), threshold=-0.5)
    assert run.answers[run.kept].expert == "beta" and run.failovers[0].expert == "alpha"


def test_confidence_is_the_mean_token_logprob():
    assert confidence([{"logprob": -1.0}, {"logprob": -0.5}]) == -0.75
    assert confidence(None) is None


def test_the_offline_replay_follows_the_served_rule():
    from cluster.panel.cascade import outcome

    confidences = [SURE["alpha"], SURE["beta"], SURE["gamma"]]
    assert outcome(confidences, -0.5) == (2, 1)  # as test_unsure_answers_escalate...
    assert outcome(confidences, -3.0) == (1, 0)
    assert outcome(confidences, 0.0) == (3, 1)


def test_cascade_rides_in_the_model_string():
    from routing.options import RouteOptions

    options = RouteOptions.parse_model_string("conclave:k=cascade,k_max=2,threshold=-0.3")
    assert (options.k, options.k_max, options.cascade_threshold) == ("cascade", 2, -0.3)
