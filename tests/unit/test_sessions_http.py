"""Sessions through the gateway's HTTP app (no Ray; real Redis): the response field, the
headers, the metric, the /v1/route explanation and bad session ids."""

from __future__ import annotations

import logging

import pytest
from gateway_fakes import gateway_client
from prometheus_client.parser import text_string_to_metric_families

MATH = [("alpha", 0.9), ("beta", 0.3), ("gamma", 0.1)]
CODE = [("gamma", 0.95), ("beta", 0.3), ("alpha", 0.2)]
NOISE = [("beta", 0.8), ("alpha", 0.75), ("gamma", 0.1)]  # a follow-up: alpha close enough


@pytest.fixture()
def setup(redis_url):
    with gateway_client(redis_url) as (client, backends, _):
        backends.rankings = {"derivative": MATH, "python": CODE, "Why": NOISE}
        yield client, backends


def turn(client, messages, headers=None, **extra):
    body = {"model": "conclave:k=1", "max_tokens": 4, "messages": messages, **extra}
    resp = client.post("/v1/chat/completions", json=body, headers=headers or {})
    assert resp.status_code == 200, resp.text
    return resp


def test_a_session_keeps_its_expert_then_switches_on_a_new_topic(setup):
    client, backends = setup
    head = {"x-session-id": "conv-1"}
    history = [{"role": "user", "content": "what is the derivative of x squared"}]
    first = turn(client, history, head)
    assert first.json()["conclave"]["session"] == {"id": "conv-1", "outcome": "new"}
    assert first.headers["x-conclave-session-outcome"] == "new"
    history += [{"role": "assistant", "content": "2x"}, {"role": "user", "content": "Why?"}]
    second = turn(client, history, head)
    assert second.json()["conclave"]["session"]["outcome"] == "kept"
    assert second.json()["conclave"]["experts"][0]["id"] == "alpha"
    assert backends.routed[-1] == "what is the derivative of x squared\nWhy?"
    history += [{"role": "assistant", "content": "..."},
                {"role": "user", "content": "write a python function that sorts"}]
    third = turn(client, history, head)
    assert third.json()["conclave"]["session"]["outcome"] == "switched"
    assert third.headers["x-conclave-experts"] == "gamma"
    counts = {s.labels["outcome"]: s.value for f in text_string_to_metric_families(
        client.get("/metrics").text) if f.name == "conclave_sessions" for s in f.samples
        if s.name == "conclave_sessions_total"}
    assert counts == {"new": 1.0, "kept": 1.0, "switched": 1.0}


def test_the_user_field_and_the_body_name_a_session_and_the_header_wins(setup):
    client, _ = setup
    ask = [{"role": "user", "content": "what is the derivative of x"}]
    assert turn(client, ask, user="u-1").headers["x-conclave-session"] == "u-1"
    body = turn(client, ask, conclave={"session": "b-1"}).json()
    assert body["conclave"]["session"]["id"] == "b-1"
    both = turn(client, ask, {"x-session-id": "h-1"}, user="u-1")
    assert both.json()["conclave"]["session"]["id"] == "h-1"
    assert turn(client, ask).json()["conclave"]["session"] is None


def test_streamed_turns_carry_the_session_headers(setup):
    client, _ = setup
    ask = [{"role": "user", "content": "what is the derivative of x"}]
    turn(client, ask, {"x-session-id": "s-stream"})
    with client.stream("POST", "/v1/chat/completions", headers={"x-session-id": "s-stream"},
                       json={"model": "conclave:k=1", "messages": ask, "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-conclave-session-outcome"] == "kept"
        assert '"outcome":"kept"' in "".join(resp.iter_text())


def test_route_explains_the_session_decision_and_stores_nothing(setup):
    client, _ = setup
    turn(client, [{"role": "user", "content": "what is the derivative of x"}],
         {"x-session-id": "s-route"})
    for _ in range(2):  # a dry run: asking twice gives the same answer
        resp = client.post("/v1/route", headers={"x-session-id": "s-route"}, json={
            "model": "conclave:k=1", "messages": [
                {"role": "user", "content": "what is the derivative of x"},
                {"role": "user", "content": "write a python function"}]})
        assert resp.status_code == 200, resp.text
        session = resp.json()["session"]
        assert session["outcome"] == "switched" and session["kept_experts"] == ["alpha"]
        assert session["scores"] == {"alpha": 0.2} and session["best"] == 0.95
    fresh = client.post("/v1/route", json={"query": "x", "conclave": {"session": "s-new"}})
    assert fresh.json()["session"]["outcome"] == "new"


@pytest.mark.parametrize("headers, extra, needle", [
    ({"x-session-id": "x" * 129}, {}, "limit is 128"),
    ({}, {"user": "y" * 200}, "limit is 128"),
    ({}, {"conclave": {"session": "a\u0007b"}}, "control characters"),
])
def test_bad_session_ids_are_a_400_naming_the_limit(setup, headers, extra, needle):
    client, _ = setup
    body = {"model": "conclave", "messages": [{"role": "user", "content": "hi"}], **extra}
    for stream in (False, True):
        resp = client.post("/v1/chat/completions", json={**body, "stream": stream},
                           headers=headers)
        assert resp.status_code == 400, resp.text
        assert needle in resp.json()["error"]["message"]
        assert "128" in resp.json()["error"]["message"]
    route = client.post("/v1/route", json={"query": "hi", **extra}, headers=headers)
    assert route.status_code == 400 and needle in route.json()["error"]["message"]


def test_redis_down_routes_without_sessions_counts_and_logs_once(redis_url, tmp_path, caplog):
    dead = f"unix://{tmp_path}/no-redis.sock"
    with caplog.at_level(logging.WARNING, logger="routing.sessions"), \
            gateway_client(redis_url, session_redis=dead) as (client, _, _):
        for _ in range(3):
            resp = turn(client, [{"role": "user", "content": "hi"}], {"x-session-id": "s"})
            assert resp.json()["conclave"]["session"]["outcome"] == "stateless"
        metrics = client.get("/metrics").text
    assert 'conclave_sessions_total{outcome="stateless"} 3.0' in metrics
    assert len([r for r in caplog.records if "unreachable" in r.message]) == 1
