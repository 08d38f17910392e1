"""Streamed answers over the gateway's HTTP app (no Ray): text reaches the client while
the expert is still generating; routing errors stay 4xx; failures mid-stream are events."""

from __future__ import annotations

import json

import pytest
from gateway_fakes import gateway_client

from cluster.http.protocol import ConclaveInfo
from cluster.panel.panel import FinalAnswer

OPEN_QUESTION = "what is 2+2?"


@pytest.fixture()
def setup(redis_url):
    with gateway_client(redis_url) as parts:
        yield parts


def post_stream(client, path: str, body: dict):
    return client.stream("POST", path, json=body | {"stream": True})


def events(lines) -> list:
    """The parsed ``data:`` events of an SSE body, ``"[DONE]"`` kept as is."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def content(chunks: list) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks if isinstance(c, dict) and c.get("choices"))


def chat_body(model: str, question: str = OPEN_QUESTION) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": question}]}


def test_a_lone_expert_streams_while_it_is_still_generating(setup):
    client, backends, _ = setup
    backends.held.set()  # the expert sends one word, then waits for the test
    with post_stream(client, "/v1/chat/completions", chat_body("conclave:k=1")) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-conclave-experts"] == "alpha"
        lines = resp.iter_lines()
        seen = []
        while content(seen) == "":
            seen += events([next(lines)])
        assert content(seen) == "answer " and backends.held.is_set()  # live, not replayed
        backends.held.clear()
        seen += events(lines)
    assert seen[-1] == "[DONE]"
    assert content(seen) == "answer from alpha"
    final = seen[-2]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["conclave"]["aggregation"] == "single"
    assert final["usage"]["completion_tokens"] == 4


def test_a_panel_streams_its_synthesis(setup):
    client, backends, _ = setup
    with post_stream(client, "/v1/chat/completions", chat_body("conclave")) as resp:
        chunks = events(resp.iter_lines())
    assert backends.streamed == ["alpha"]  # the panel's answers are not streamed; the synthesis is
    assert content(chunks) == "answer from alpha"
    assert chunks[-2]["conclave"]["aggregation"] == "synthesis"
    assert len([c for c in chunks[:-2] if content([c])]) == 3  # word by word


def test_a_voted_answer_is_streamed_once_the_panel_is_done(setup):
    client, backends, _ = setup
    question = "Which is prime?\nA) 4\nB) 7\nC) 9"
    with post_stream(client, "/v1/chat/completions", chat_body("conclave", question)) as resp:
        chunks = events(resp.iter_lines())
    assert backends.streamed == []
    assert chunks[-2]["conclave"]["aggregation"] == "vote"
    assert content(chunks) == "answer from alpha"


def test_a_failure_before_any_text_fails_over_and_the_stand_in_streams(setup):
    client, backends, _ = setup
    backends.failing = {"alpha"}
    with post_stream(client, "/v1/chat/completions", chat_body("conclave:k=1")) as resp:
        chunks = events(resp.iter_lines())
    assert backends.streamed == ["beta"]
    assert content(chunks) == "answer from beta"
    assert chunks[-2]["conclave"]["failovers"][0]["expert"] == "alpha"


@pytest.mark.parametrize("model", ["conclave:k=1", "conclave:k=2"])  # lone expert, synthesis
def test_a_failure_after_text_went_out_ends_the_stream_with_an_error_event(setup, model):
    client, backends, _ = setup
    backends.fail_midway = {"alpha"}
    with post_stream(client, "/v1/chat/completions", chat_body(model)) as resp:
        assert resp.status_code == 200
        chunks = events(resp.iter_lines())
    assert backends.streamed == ["alpha"]  # a stand-in answers but cannot stream on top
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["error"]["code"] == "stream_broken"
    assert content(chunks) == "answer "


def test_streamed_completions_are_live_per_prompt_and_sum_their_usage(setup):
    client, _, _ = setup
    body = {"model": "conclave:k=1", "prompt": ["a b", "c"], "max_tokens": 5}
    with post_stream(client, "/v1/completions", body) as resp:
        chunks = events(resp.iter_lines())
    texts = {}
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {0: "answer from alpha", 1: "answer from alpha"}
    assert chunks[-2]["usage"]["completion_tokens"] == 8
    assert len(chunks[-2]["conclave"]) == 2


@pytest.mark.parametrize("body, status", [
    (chat_body("nope"), 404),
    (chat_body("conclave:k=99"), 400),
    (chat_body("conclave") | {"max_tokens": 101}, 400),
])
def test_bad_streamed_requests_are_4xx_json_not_a_stream(setup, body, status):
    client, _, _ = setup
    with post_stream(client, "/v1/chat/completions", body) as resp:
        resp.read()
        assert resp.status_code == status
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json()["error"]["message"]


def test_every_expert_failing_mid_request_is_an_error_event(setup):
    client, backends, _ = setup
    backends.failing = {"alpha", "beta", "gamma"}
    with post_stream(client, "/v1/chat/completions", chat_body("conclave")) as resp:
        chunks = events(resp.iter_lines())
    assert chunks[-2]["error"]["code"] == "experts_unavailable"
    assert chunks[-1] == "[DONE]"


@pytest.mark.parametrize("deltas", [[" 4", "2 \n"], ["\n", "42"], ["4", "2", " "]])
def test_whitespace_the_final_answer_is_stripped_of_does_not_break_the_stream(deltas):
    """The answer's text is stripped (routing/aggregate.py); what streamed still stands."""
    import asyncio

    from cluster.http.streaming import streamed_text

    async def run(sink):
        for delta in deltas:
            sink(delta)
        return FinalAnswer("42", finish_reason="stop", info=ConclaveInfo(
            experts=[], strategy="direct", aggregation="single", cache="direct"))

    async def collect():
        return [item async for item in streamed_text(run)]

    *texts, final = asyncio.run(collect())
    assert texts == deltas and final.text == "42"
