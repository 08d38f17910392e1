"""The deployed app through the stock ``openai`` client (real Ray, Redis and HTTP)."""

from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.ray

MATH = "what is the derivative of x cubed"


@pytest.fixture(scope="module")
def client(conclave_server):
    return openai.OpenAI(base_url=conclave_server.url + "/v1", api_key="unused", timeout=120,
                         max_retries=0)


def info(resp) -> dict:
    return resp.model_extra["conclave"]


def test_models_list_has_the_panel_and_every_expert(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "conclave"
    assert {"general", "math", "code", "medicine"} <= set(ids)


def test_chat_completion(client):
    resp = client.chat.completions.create(
        model="conclave", messages=[{"role": "user", "content": MATH}], max_tokens=4)
    assert resp.object == "chat.completion"
    assert isinstance(resp.choices[0].message.content, str)
    used = [e["id"] for e in info(resp)["experts"]]
    assert len(used) == 2 and "math" in used  # k=2 from the config; math's examples match
    assert resp.usage.completion_tokens > 0


def test_completion(client):
    resp = client.completions.create(model="conclave", prompt="fix this python bug",
                                     max_tokens=4)
    assert resp.object == "text_completion"
    assert isinstance(resp.choices[0].text, str)
    assert resp.model_extra["conclave"][0]["strategy"] == "knn"


def test_streaming_chat(client):
    stream = client.chat.completions.create(
        model="conclave", messages=[{"role": "user", "content": MATH}], max_tokens=4,
        stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].model_extra["conclave"]["experts"]


def test_streaming_completion(client):
    chunks = list(client.completions.create(model="conclave", prompt="solve the equation",
                                            max_tokens=4, stream=True))
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_routing_options_in_the_model_string(client):
    resp = client.chat.completions.create(
        model="conclave:k=1,strategy=skills", max_tokens=4,
        messages=[{"role": "user", "content": "the patient presents with a fever"}])
    assert len(info(resp)["experts"]) == 1
    assert info(resp)["strategy"] == "skills"
    assert info(resp)["aggregation"] == "single"


def test_options_in_the_body_and_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="conclave", max_tokens=4, extra_body={"conclave": {"k": 3}},
        messages=[{"role": "user", "content": "write a python function"}])
    resp = raw.parse()
    assert len(info(resp)["experts"]) == 3
    assert raw.headers["x-conclave-experts"].count(",") == 2
    assert raw.headers["x-conclave-cache"] in ("hit", "miss")


def test_one_expert_asked_directly(client):
    resp = client.chat.completions.create(
        model="code", messages=[{"role": "user", "content": "hello"}], max_tokens=4)
    assert [e["id"] for e in info(resp)["experts"]] == ["code"]
    assert info(resp)["cache"] == "direct"


def test_unknown_model_and_bad_options_are_client_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user",
                                                                  "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="conclave:k=zero", messages=[{"role": "user",
                                                                           "content": "hi"}])
    assert err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="conclave", max_tokens=10_000,
                                       messages=[{"role": "user", "content": "hi"}])


def test_streaming_one_expert_sends_token_deltas_as_they_are_generated(client):
    stream = client.chat.completions.create(
        model="math", messages=[{"role": "user", "content": MATH}], max_tokens=16,
        temperature=0, stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(deltas)
    assert chunks[-1].usage.completion_tokens >= len(deltas) > 1
    # Token pieces from the pool, not the finished text cut at spaces afterwards.
    assert len(deltas) > len(text.split(" "))
