"""POST /v1/responses through the gateway's HTTP app (no Ray; real Redis), driven by the
stock ``openai`` client: chained calls, streaming, store: false, bad ids."""

from __future__ import annotations

import openai
import pytest
from gateway_fakes import gateway_client

MATH = [("alpha", 0.9), ("beta", 0.3), ("gamma", 0.1)]
NOISE = [("beta", 0.8), ("alpha", 0.75), ("gamma", 0.1)]


@pytest.fixture()
def setup(redis_url):
    with gateway_client(redis_url) as (client, backends, _):
        backends.rankings = {"derivative": MATH, "Why": NOISE}
        stock = openai.OpenAI(base_url="http://testserver/v1", api_key="unused",
                              http_client=client, max_retries=0)
        yield stock, client, backends


def test_a_chained_second_call_continues_the_conversation_and_its_session(setup):
    stock, _, backends = setup
    first = stock.responses.create(model="conclave:k=1", input="what is the derivative of x",
                                   instructions="Answer briefly.")
    assert first.output_text == "answer from alpha" and first.status == "completed"
    assert first.conclave["session"] == {"id": first.id, "outcome": "new"}
    second = stock.responses.create(model="conclave:k=1", input="Why?",
                                    previous_response_id=first.id)
    assert second.output_text == "answer from alpha"
    assert second.conclave["session"] == {"id": first.id, "outcome": "kept"}
    assert backends.routed[-1] == "what is the derivative of x\nWhy?"
    third = stock.responses.create(model="conclave:k=1", input="And then?",
                                   previous_response_id=second.id)
    assert third.conclave["session"]["id"] == first.id
    assert third.usage.output_tokens == 4


def test_streamed_and_chained(setup):
    stock, _, _ = setup
    events = list(stock.responses.create(model="conclave:k=1", stream=True,
                                         input="what is the derivative of x"))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert text == done.output_text == "answer from alpha"
    follow = list(stock.responses.create(model="conclave:k=1", stream=True, input="Why?",
                                         previous_response_id=done.id))
    assert follow[-1].response.conclave["session"]["outcome"] == "kept"


def test_store_false_is_not_kept_and_unknown_ids_are_404(setup):
    stock, client, _ = setup
    once = stock.responses.create(model="conclave:k=1", input="hello", store=False)
    assert once.conclave["session"] is None  # no session named, none made
    for missing in (once.id, "resp_nope"):
        with pytest.raises(openai.NotFoundError) as caught:
            stock.responses.create(model="conclave", input="again",
                                   previous_response_id=missing)
        error = caught.value.body
        assert error["code"] == "previous_response_not_found"
        assert error["param"] == "previous_response_id" and missing in error["message"]
    raw = client.post("/v1/responses", json={"model": "conclave", "input": "x",
                                             "previous_response_id": "resp_nope",
                                             "stream": True})
    assert raw.status_code == 404 and raw.json()["error"]["type"] == "invalid_request_error"


def test_stored_conversations_are_trimmed_to_the_size_limit(redis_url):
    from cluster.http.response_store import ResponsesConfig, ResponseStore, StoredConversation
    from experts.redis_conn import connect

    store = ResponseStore(connect(redis_url), "t", ResponsesConfig(max_bytes=1024, ttl_s=60))
    turns = [{"role": "user", "content": "x" * 300} for _ in range(5)]
    assert store.save("r1", StoredConversation(messages=turns, session="s"))
    kept = store.load("r1")
    assert 1 <= len(kept.messages) < 5 and kept.session == "s"
    assert connect(redis_url).ttl("t:response:r1") <= 60
    assert not store.save("r2", StoredConversation(messages=[{"role": "user",
                                                              "content": "y" * 2000}]))
    assert store.load("r2") is None


def test_an_input_without_a_user_turn_is_a_400_naming_input(setup):
    _, client, _ = setup
    for bad in ([{"role": "assistant", "content": "x"}], [{"role": "user", "content": []}]):
        resp = client.post("/v1/responses", json={"model": "conclave", "input": bad})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["param"] == "input" and error["message"].startswith("input: ")
