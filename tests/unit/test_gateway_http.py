"""The gateway's HTTP surface without Ray: real FastAPI app, real registry in the embedded
Redis, and plain async functions standing in for the router and the expert pools."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest
from gateway_fakes import AUTH, TOKEN, gateway_client
from prometheus_client.parser import text_string_to_metric_families

from cluster.http.app import ShutdownGate
from cluster.ops.tracing import RequestIdFilter


@pytest.fixture()
def setup(redis_url):
    with gateway_client(redis_url) as parts:
        yield parts


def chat(client, model="conclave", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "what is 2+2?"}]} | extra
    return client.post("/v1/chat/completions", json=body)


def test_chat_answers_with_panel_info_and_headers(setup):
    client, _, _ = setup
    resp = chat(client)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "answer from alpha"
    info = body["conclave"]
    assert [e["id"] for e in info["experts"]] == ["alpha", "beta"]
    assert info["cache"] == "miss" and info["failovers"] == []
    assert resp.headers["x-conclave-experts"] == "alpha,beta"
    # auto aggregation on an open question: alpha (best weighted) synthesises
    assert (info["aggregation"], info["aggregator"]) == ("synthesis", "alpha")
    assert body["usage"]["completion_tokens"] == 12  # 2 experts + the synthesis call


def test_multiple_choice_question_is_voted_without_a_model_call(setup):
    client, backends, _ = setup
    question = "Which is prime?\nA) 4\nB) 7\nC) 9"
    resp = client.post("/v1/chat/completions", json={
        "model": "conclave", "messages": [{"role": "user", "content": question}]})
    assert resp.json()["conclave"]["aggregation"] == "vote"
    assert backends.calls == ["alpha", "beta"]


def test_failed_synthesis_falls_back_to_best_answer(setup):
    client, backends, _ = setup
    backends.fail_prompts_with = "Response 1:"
    resp = chat(client)
    assert resp.status_code == 200
    info = resp.json()["conclave"]
    assert info["aggregation"] == "best"
    assert info["failovers"][0]["reason"].startswith("synthesis:")


def test_options_in_model_string_and_body(setup):
    client, _, _ = setup
    resp = chat(client, model="conclave:k=3,strategy=skills")
    assert [e["id"] for e in resp.json()["conclave"]["experts"]] == ["alpha", "beta", "gamma"]
    assert resp.json()["conclave"]["strategy"] == "skills"
    resp = chat(client, model="conclave:k=3", conclave={"k": 1})
    assert [e["id"] for e in resp.json()["conclave"]["experts"]] == ["alpha"]


def test_failed_expert_fails_over_to_next_ranked(setup):
    client, backends, _ = setup
    backends.failing = {"beta"}
    resp = chat(client)
    assert resp.status_code == 200
    info = resp.json()["conclave"]
    assert [(e["id"], e["replaces"]) for e in info["experts"]] == [("alpha", None),
                                                                   ("gamma", "beta")]
    assert info["failovers"][0]["expert"] == "beta"
    assert info["failovers"][0]["replacement"] == "gamma"
    assert "exploded" in info["failovers"][0]["reason"]


def test_every_expert_failing_is_a_502_with_error_body(setup):
    client, backends, _ = setup
    backends.failing = {"alpha", "beta", "gamma"}
    resp = chat(client)
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "experts_unavailable"


def test_direct_expert_request(setup):
    client, backends, _ = setup
    resp = chat(client, model="gamma")
    assert resp.status_code == 200
    assert resp.json()["conclave"]["cache"] == "direct"
    assert backends.calls == ["gamma"]


def test_tool_calls_an_expert_chose_to_make_answer_as_tool_calls(setup):
    client, backends, _ = setup
    call = {"id": "call_1", "type": "function",
            "function": {"name": "add", "arguments": '{"a": 1}'}}
    backends.tool_calls = [call]
    tools = [{"type": "function", "function": {"name": "add"}}]
    resp = client.post("/v1/chat/completions", json={
        "model": "alpha", "tools": tools, "tool_choice": "auto",
        "messages": [{"role": "user", "content": "add one"}]})
    [choice] = resp.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": "answer from alpha",
                                 "tool_calls": [call]}


def test_streaming_chat_is_sse_ending_in_done(setup):
    client, _, _ = setup
    resp = chat(client, stream=True)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "answer from alpha"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["conclave"]["experts"][0]["id"] == "alpha"


def test_completions_and_models(setup):
    client, _, _ = setup
    resp = client.post("/v1/completions", json={"model": "conclave", "prompt": ["a b", "c"]})
    assert resp.status_code == 200
    assert [c["index"] for c in resp.json()["choices"]] == [0, 1]
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids == ["conclave", "alpha", "beta", "gamma"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        (b"{not json", 400, None),
        (json.dumps({"model": "conclave"}).encode(), 400, "messages"),
        (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).encode(),
         404, "model"),
        (json.dumps({"model": "conclave", "messages": [{"role": "user", "content": "  "}]}
                    ).encode(), 400, "messages"),
        (json.dumps({"model": "conclave", "max_tokens": 101,
                     "messages": [{"role": "user", "content": "hi"}]}).encode(), 400,
         "max_tokens"),
        (json.dumps({"model": "conclave:k=99", "messages": [{"role": "user", "content": "hi"}]}
                    ).encode(), 400, "model"),
        (b"{" + b" " * 5000 + b"}", 413, None),
    ],
)
def test_bad_input_is_4xx_with_openai_error_body(setup, body, status, param):
    client, _, _ = setup
    resp = client.post("/v1/chat/completions", content=body,
                       headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param:
        assert error["param"] == param


@pytest.mark.parametrize("part, kind", [
    ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "image_url"),
    ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
     "input_audio"),
    ({"type": "file", "file": {"file_id": "file-1"}}, "file"),
])
def test_non_text_content_part_is_a_400_naming_its_type(setup, part, kind):
    client, backends, _ = setup
    content = [{"type": "text", "text": "what is in this?"}, part]
    resp = chat(client, messages=[{"role": "user", "content": content}])
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "messages.0.content"
    assert f"content part 1 has type {kind!r}" in error["message"]
    assert "text parts only" in error["message"]
    assert backends.calls == []


def test_text_content_parts_are_joined(setup):
    client, _, _ = setup
    content = [{"type": "text", "text": "what is "}, {"text": "2+2?"}]
    resp = chat(client, messages=[{"role": "user", "content": content}])
    assert resp.status_code == 200, resp.text


def test_request_timeout_is_504(setup):
    client, backends, _ = setup
    backends.hang = True
    resp = chat(client)
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "request_timeout"


def test_admin_needs_the_token(setup):
    client, _, catalog = setup
    spec = {"id": "delta", "model": "org/delta", "description": "new"}
    assert client.get("/v1/experts").status_code == 401
    assert client.post("/v1/experts", json=spec,
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.delete("/v1/experts/alpha").status_code == 401
    resp = client.post("/v1/experts", json=spec, headers=AUTH)
    assert resp.status_code == 200 and resp.json()["added"] == "delta"
    assert "delta" in catalog  # this replica sees it as soon as the call returns
    assert client.post("/v1/experts", json=spec, headers=AUTH).status_code == 409
    assert client.delete("/v1/experts/delta", headers=AUTH).status_code == 200
    assert "delta" not in catalog
    assert client.delete("/v1/experts/delta", headers=AUTH).status_code == 404
    assert TOKEN not in client.get("/v1/experts", headers=AUTH).text


def test_admin_refuses_local_paths_outside_allowed_roots(setup, tmp_path):
    client, _, _ = setup
    spec = {"id": "local", "model": str(tmp_path)}
    resp = client.post("/v1/experts", json=spec, headers=AUTH)
    assert resp.status_code == 400
    assert "allowed roots" in resp.json()["error"]["message"]


def test_removed_expert_gets_no_new_work(setup):
    client, backends, _ = setup
    assert client.delete("/v1/experts/beta", headers=AUTH).status_code == 200
    backends.calls.clear()
    resp = chat(client)  # the (fake) router still ranks beta second
    assert "beta" not in backends.calls
    info = resp.json()["conclave"]
    assert [e["id"] for e in info["experts"]] == ["alpha", "gamma"]
    assert info["failovers"] == []  # a stale decision is not a failed call: beta never tried


def test_metrics_parse_as_prometheus_text(setup):
    client, backends, _ = setup
    backends.failing = {"beta"}
    chat(client)
    resp = client.get("/metrics")
    assert resp.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    for name in ("conclave_routing_seconds", "conclave_decisions", "conclave_pattern_cache",
                 "conclave_model_loads", "conclave_expert_batch_size",
                 "conclave_generated_tokens", "conclave_failovers"):
        assert name in families, name
    failovers = {s.labels.get("expert"): s.value for s in families["conclave_failovers"].samples
                 if s.name == "conclave_failovers_total"}
    assert failovers == {"beta": 1.0}
    assert client.get("/healthz").json()["status"] == "ok"


def test_drain_waits_for_requests_in_flight_then_refuses_new_ones(redis_url):
    gate = ShutdownGate()
    with gateway_client(redis_url, gate) as (client, backends, _):
        backends.hang = True  # held until the 0.5 s request timeout (504)
        slow = threading.Thread(target=chat, args=(client,))
        slow.start()
        while gate.in_flight == 0:
            time.sleep(0.01)
        assert asyncio.run(gate.drain(0.05)) == 1  # grace over, still running
        refused = chat(client)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        assert refused.headers["retry-after"] == "1"
        assert client.get("/healthz").status_code == 503
        assert client.get("/metrics").status_code == 200  # scrapes still work
        assert asyncio.run(gate.drain(5)) == 0  # the held one ended (its timeout)
        slow.join()


class Records(logging.Handler):
    """Keeps the records it gets, through the request-id filter (as the real handler)."""

    def __init__(self):
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_request_id_is_generated_and_returned(setup):
    client, _, _ = setup
    resp = chat(client)
    request_id = resp.headers["x-request-id"]
    assert len(request_id) == 32 and resp.json()["conclave"]["request_id"] == request_id
    assert chat(client).headers["x-request-id"] != request_id  # one per request


@pytest.mark.parametrize("sent, kept", [("req-42.a:b", True), ("Root=1-5759e988;Sampled=1", True),
                                        ("x" * 129, False), ("has space", False),
                                        ("caf\u00e9", False)])
def test_incoming_request_id_is_kept_when_sane(setup, sent, kept):
    client, backends, _ = setup
    backends.failing = {"beta"}  # a failover: the panel logs a warning mid-request
    records = Records()
    logging.getLogger("cluster.panel.panel").addHandler(records)
    try:
        resp = client.post("/v1/chat/completions", headers={"x-request-id": sent.encode()},
                           json={"model": "conclave",
                                 "messages": [{"role": "user", "content": "hi"}]})
    finally:
        logging.getLogger("cluster.panel.panel").removeHandler(records)
    request_id = resp.json()["conclave"]["request_id"]
    assert (request_id == sent) is kept
    if not kept:  # replaced, and the response says by what
        assert resp.headers["x-request-id"] == request_id and len(request_id) == 32
    failover_lines = [r for r in records.records if "failover" in r.getMessage()]
    assert failover_lines and {r.request_id for r in failover_lines} == {request_id}


def test_refusals_carry_a_request_id_too(setup):
    client, _, _ = setup
    resp = client.post("/v1/chat/completions", json={"model": "conclave"})
    assert resp.status_code == 400 and len(resp.headers["x-request-id"]) == 32
