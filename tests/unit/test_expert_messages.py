"""The gateway → pool messages survive the Ray hop (pickle) unchanged; a failed reply
carries one error type, the request's own fault kept as it was raised."""

from __future__ import annotations

import pickle

import pytest

from cluster.ops.tracing import TraceContext
from cluster.serve.messages import BatchStats, ExpertReply, ExpertRequest
from experts.engine import Generation, GenerationParams
from experts.errors import ExpertError, PromptTooLongError, UnsupportedFeatureError


def round_trip(message):
    return pickle.loads(pickle.dumps(message))


def test_requests_and_replies_round_trip_through_pickle():
    chat = [{"role": "user", "content": "2 + 2?"}]
    request = ExpertRequest("math", chat, GenerationParams(max_tokens=4, stop=["\n"]),
                            TraceContext("00-" + "a" * 32 + "-" + "b" * 16 + "-01", "req-1"))
    assert round_trip(request) == request
    out = Generation("4", prompt_tokens=5, completion_tokens=1, finish_reason="stop",
                     logprobs=[{"token": "4", "logprob": -0.1, "top_logprobs": []}],
                     no_record=True)
    reply = ExpertReply.of(out).with_stats(BatchStats(batch_size=3, seconds=0.2, loads=(1.5,)))
    back = round_trip(reply)
    assert back == reply and back.raise_error() is back
    assert (back.text, back.completion_tokens, back.logprobs, back.no_record) == (
        "4", 1, out.logprobs, True)


def test_a_failed_reply_names_the_expert_and_raises_one_error_type():
    failed = round_trip(ExpertReply.failed("math", RuntimeError("CUDA out of memory")))
    assert isinstance(failed.error, ExpertError) and not failed.request_fault
    with pytest.raises(ExpertError, match=r"^expert 'math': RuntimeError: CUDA out of memory$"):
        failed.raise_error()


@pytest.mark.parametrize("error", [PromptTooLongError("prompt is 900 tokens, over 512"),
                                   UnsupportedFeatureError("logprobs: not on this engine")])
def test_the_requests_own_fault_comes_back_as_raised(error):
    failed = round_trip(ExpertReply.failed("math", error))
    assert failed.request_fault and type(failed.error) is type(error)
    assert str(failed.error) == str(error)
