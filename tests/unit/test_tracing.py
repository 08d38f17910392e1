"""Tracing in the gateway's HTTP surface without Ray: the SDK's in-memory exporter, the real
FastAPI app and service, fake router and pools."""

from __future__ import annotations

import secrets

import pytest
from gateway_fakes import gateway_client

from cluster.config import TracingConfig
from cluster.ops.tracing import TraceContext, memory_spans, setup_tracing, span
from cluster.serve.router import trace_route


@pytest.fixture()
def traced():
    setup_tracing(TracingConfig(enabled=True, exporter="memory"), "test")
    yield
    setup_tracing(TracingConfig(), "test")  # back to the no-op


def chat(client, headers=None):
    body = {"model": "conclave", "messages": [{"role": "user", "content": "what is 2+2?"}]}
    resp = client.post("/v1/chat/completions", json=body, headers=headers or {})
    assert resp.status_code == 200, resp.text
    return resp


def test_incoming_traceparent_is_honoured_and_the_request_id_is_on_every_span(traced,
                                                                             redis_url):
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    with gateway_client(redis_url) as (client, backends, _):
        backends.failing = {"beta"}
        resp = chat(client, {"traceparent": f"00-{trace_id}-{caller}-01",
                             "x-request-id": "req-7"})
    spans = memory_spans()
    assert {s.context.trace_id for s in spans} == {int(trace_id, 16)}
    (root,) = [s for s in spans if s.name == "POST /v1/chat/completions"]
    assert root.parent.span_id == int(caller, 16)
    assert root.attributes["http.response.status_code"] == 200
    (failover,) = [s for s in spans if s.name == "failover"]
    assert failover.attributes["conclave.expert"] == "beta"
    assert failover.attributes["conclave.replacement"] == "gamma"
    (aggregate,) = [s for s in spans if s.name == "aggregate"]
    assert aggregate.parent.span_id == root.context.span_id
    assert {s.attributes["conclave.request_id"] for s in spans} == {"req-7"}
    assert resp.json()["conclave"]["request_id"] == "req-7"


def test_each_request_is_its_own_trace(traced, redis_url):
    with gateway_client(redis_url) as (client, _, _):
        chat(client)
        chat(client)
        client.get("/healthz")  # probes and scrapes are not traced
        client.get("/metrics")
    roots = [s for s in memory_spans() if s.parent is None]
    assert len(roots) == 2 and len({s.context.trace_id for s in roots}) == 2


def test_context_crosses_a_hop_as_a_traceparent(traced):
    with span("route") as sender:
        context = TraceContext.current()
    phases = {"encode": (1, 2), "cache": (2, 3), "strategy": (3, 5)}
    trace_route(context, phases, "knn", "miss", ["math"], batch_size=4)
    by_name = {s.name: s for s in memory_spans()}
    router = by_name["router"]
    assert router.parent.span_id == sender.get_span_context().span_id
    assert router.attributes["conclave.experts"] == ("math",)
    assert router.attributes["conclave.batch_size"] == 4
    for child in ("encode", "pattern_cache.lookup", "routing.strategy"):
        assert by_name[child].parent.span_id == router.context.span_id, child
    assert (by_name["routing.strategy"].start_time, by_name["routing.strategy"].end_time) == (3, 5)


def test_sampled_out_requests_record_nothing(redis_url):
    setup_tracing(TracingConfig(enabled=True, exporter="memory", sampling_ratio=0.0), "test")
    try:
        with gateway_client(redis_url) as (client, _, _):
            chat(client)
        assert memory_spans() == []
    finally:
        setup_tracing(TracingConfig(), "test")


def test_tracing_off_records_nothing_and_costs_no_context(redis_url):
    with gateway_client(redis_url) as (client, _, _):
        chat(client)
    assert memory_spans() == []
    assert TraceContext.current().traceparent is None
