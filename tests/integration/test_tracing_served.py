"""Traces across the real app: the session app records every span as a JSON line (the
file exporter; each replica process appends its own), so one request's spans from the
gateway, router and pool replicas can be put back together here."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.ray


def spans_of(server, trace_id: str, until: set[str], deadline_s: float = 20.0) -> list[dict]:
    """The spans of one trace, once those named in ``until`` are all written."""
    path = Path(server.args["tracing"]["file"])
    end = time.monotonic() + deadline_s
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        spans = [s for s in map(json.loads, lines) if s["context"]["trace_id"] == "0x" + trace_id]
        if until <= {s["name"] for s in spans} or time.monotonic() > end:
            return spans
        time.sleep(0.2)


def chat(server, content: str, model: str = "conclave:k=1", headers=None) -> httpx.Response:
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": content}]}
    resp = httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers or {},
                      timeout=120)
    assert resp.status_code == 200, resp.text
    return resp


def ancestors(span: dict, by_id: dict[str, dict]) -> list[str]:
    names = []
    while span["parent_id"] in by_id:
        span = by_id[span["parent_id"]]
        names.append(span["name"])
    return names


def test_one_trace_per_request_across_gateway_router_and_pool(conclave_server):
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{caller_span}-01", "x-request-id": "trace-test-1"}
    resp = chat(conclave_server, "what is the derivative of x squared", headers=headers)
    assert resp.json()["conclave"]["request_id"] == "trace-test-1"
    spans = spans_of(conclave_server, trace_id,
                     {"POST /v1/chat/completions", "router", "pool.generate", "aggregate"})
    by_id = {s["context"]["span_id"]: s for s in spans}
    names = {s["name"] for s in spans}
    assert {"POST /v1/chat/completions", "route", "router", "encode", "pattern_cache.lookup",
            "expert", "pool.generate", "aggregate"} <= names, names
    (root,) = [s for s in spans if s["parent_id"] not in by_id]
    assert root["name"] == "POST /v1/chat/completions"
    assert root["parent_id"] == "0x" + caller_span  # the caller's traceparent, honoured
    (router,) = [s for s in spans if s["name"] == "router"]
    assert ancestors(router, by_id) == ["route", root["name"]]
    assert router["attributes"]["conclave.experts"] == ["math"]
    (generate,) = [s for s in spans if s["name"] == "pool.generate"]
    assert ancestors(generate, by_id) == ["expert", root["name"]]
    assert generate["attributes"]["conclave.batch_size"] >= 1
    components = {s["resource"]["attributes"]["conclave.component"] for s in spans}
    assert components == {"gateway", "router", "pool-default"}  # three processes
    assert {s["attributes"].get("conclave.request_id") for s in spans} == {"trace-test-1"}


def test_failover_is_its_own_span_and_untraced_callers_get_a_new_trace(conclave_server):
    resp = chat(conclave_server, "zebra quantum pancake riddle?")
    assert resp.json()["conclave"]["failovers"][0]["expert"] == "broken"
    request_id = resp.json()["conclave"]["request_id"]
    path = Path(conclave_server.args["tracing"]["file"])
    deadline = time.monotonic() + 20
    while True:
        mine = [s for s in map(json.loads, path.read_text().splitlines())
                if s["attributes"].get("conclave.request_id") == request_id]
        if {"failover", "POST /v1/chat/completions"} <= {s["name"] for s in mine}:
            break
        assert time.monotonic() < deadline, [s["name"] for s in mine]
        time.sleep(0.2)
    assert len({s["context"]["trace_id"] for s in mine}) == 1  # one trace per request
    (failover,) = [s for s in mine if s["name"] == "failover"]
    assert failover["attributes"]["conclave.expert"] == "broken"
    replacement = failover["attributes"]["conclave.replacement"]
    experts = [s for s in mine if s["name"] == "expert"]
    failed = [s for s in experts if s["attributes"]["conclave.expert"] == "broken"]
    assert failed and failed[0]["status"]["status_code"] == "ERROR"
    assert replacement in {s["attributes"]["conclave.expert"] for s in experts}
    roots = [s for s in mine if s["parent_id"] is None]
    assert [s["name"] for s in roots] == ["POST /v1/chat/completions"]
