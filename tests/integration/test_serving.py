"""The deployed app over real HTTP: admin API, failover, cache, batching, metrics, limits."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def http(conclave_server):
    with httpx.Client(base_url=conclave_server.url, timeout=120) as client:
        yield client


def chat(http, content, model="conclave", **extra):
    return http.post("/v1/chat/completions", json={
        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": content}],
        **extra})


def route(http, query, model="conclave"):
    resp = http.post("/v1/route", json={"query": query, "model": model})
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_for(predicate, what: str, deadline_s: float = 30.0):
    """Poll until ``predicate()`` holds (registry notifications are asynchronous)."""
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.2)


def test_route_dry_run_explains_and_second_call_hits_the_cache(http):
    query = "what dose of paracetamol is safe for the patient"
    first = route(http, query)
    assert first["decision"]["experts"][0] == "medicine"
    assert first["decision"]["ranked"] and first["decision"]["explanation"]
    assert first["cache"] == "miss"
    assert route(http, query)["cache"] == "hit"


def test_broken_expert_fails_over_to_the_next_ranked(http):
    query = "zebra quantum pancake riddle"
    assert route(http, query + "?", "conclave:k=1")["decision"]["experts"] == ["broken"]
    resp = chat(http, query + "?", model="conclave:k=1")
    assert resp.status_code == 200, resp.text
    info = resp.json()["conclave"]
    assert info["failovers"][0]["expert"] == "broken"
    replacement = info["failovers"][0]["replacement"]
    assert [(e["id"], e["replaces"]) for e in info["experts"]] == [(replacement, "broken")]


def test_asking_the_broken_expert_directly_is_a_502(http):
    resp = chat(http, "hello", model="broken")
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "experts_unavailable"


def test_admin_add_and_remove_need_the_token(http, conclave_server, tiny_lm):
    spec = {"id": "geology", "kind": "lora", "base": "general",
            "adapter": conclave_server.args["experts"][1]["adapter"],
            "description": "rocks", "examples": ["which rock is igneous basalt or granite",
                                                 "which rock is sedimentary sandstone"]}
    assert http.post("/v1/experts", json=spec).status_code == 401
    assert http.post("/v1/experts", json=spec,
                     headers={"Authorization": "Bearer nope"}).status_code == 401
    assert http.get("/v1/experts").status_code == 401
    resp = http.post("/v1/experts", json=spec, headers=conclave_server.auth)
    assert resp.status_code == 200, resp.text
    assert "geology" in [m["id"] for m in http.get("/v1/models").json()["data"]]
    query = "which rock is metamorphic marble or basalt"
    wait_for(lambda: route(http, query, "conclave:k=1")["decision"]["experts"] == ["geology"],
             "the router indexes the new expert")
    assert chat(http, query, model="conclave:k=1").json()["conclave"]["experts"][0]["id"] == \
        "geology"
    assert http.delete("/v1/experts/geology").status_code == 401
    assert http.delete("/v1/experts/geology", headers=conclave_server.auth).status_code == 200
    # No new work for it once the call returned, even before the router has caught up.
    used = [e["id"] for e in chat(http, query, model="conclave:k=1").json()["conclave"]["experts"]]
    assert "geology" not in used
    assert "geology" not in [m["id"] for m in http.get("/v1/models").json()["data"]]
    listed = http.get("/v1/experts", headers=conclave_server.auth).json()
    assert "geology" not in [s["id"] for s in listed["data"]]
    assert conclave_server.token not in json.dumps(listed)


def test_concurrent_requests_are_batched_per_engine(conclave_server):
    async def burst():
        async with httpx.AsyncClient(base_url=conclave_server.url, timeout=120) as client:
            bodies = [{"model": "conclave", "max_tokens": 4, "messages": [
                {"role": "user", "content": f"solve the equation {i}x = {i + 1}"}]}
                for i in range(16)]
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=b)
                                          for b in bodies))

    assert all(r.status_code == 200 for r in asyncio.run(burst()))
    samples = metric_samples(conclave_server.url, "conclave_expert_batch_size")
    count = sum(s.value for s in samples if s.name.endswith("_count"))
    at_most_one = sum(s.value for s in samples
                      if s.name.endswith("_bucket") and s.labels["le"] == "1.0")
    assert count > at_most_one  # some batch held more than one request
    route_sizes = metric_samples(conclave_server.url, "conclave_route_batch_size")
    assert sum(s.value for s in route_sizes if s.name.endswith("_count")) > 0


def metric_samples(url: str, family: str):
    text = httpx.get(url + "/metrics", timeout=30).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return families[family].samples


def test_metrics_parse_and_count_the_work(http, conclave_server):
    chat(http, "what is the capital city of spain")
    text = http.get("/metrics").text
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"conclave_routing_seconds", "conclave_decisions", "conclave_pattern_cache",
            "conclave_model_loads", "conclave_model_load_seconds", "conclave_generated_tokens",
            "conclave_failovers", "conclave_expert_batch_size"} <= names
    loads = metric_samples(conclave_server.url, "conclave_model_loads")
    assert sum(s.value for s in loads if s.name.endswith("_total")) >= 1


@pytest.mark.parametrize("body, status", [
    (b"{oops", 400),
    (b'{"model": "conclave"}', 400),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404),
    (b'{"model": "conclave", "messages": [{"role": "user", "content": ""}]}', 400),
    (b'{"model": "conclave", "messages": []}', 400),
    (b'{"model": "conclave", "messages": [{"role": "user", "content": "hi"}], "x": "'
     + b"a" * 70000 + b'"}', 413),
])
def test_bad_input_gets_a_4xx_openai_error(http, body, status):
    resp = http.post("/v1/chat/completions", content=body,
                     headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_healthz(http):
    body = http.get("/healthz").json()
    assert body["status"] == "ok" and body["experts"] >= 4


def test_stored_aggregator_choice_applies_per_query_without_redeploy(http, conclave_server):
    from experts.redis_conn import connect
    from routing.aggregate import AggregatorChoice, AggregatorStore

    store = AggregatorStore(connect(conclave_server.redis_url),
                            namespace=conclave_server.namespace)
    query = "the patient presents with fever and a rash"
    try:
        store.save(AggregatorChoice(by_domain={"medicine": "math"}, fallback="code"))
        decision = route(http, query)["decision"]
        assert decision["experts"][0] == "medicine" and decision["aggregator"] == "math"
        store.save(AggregatorChoice(by_domain={"medicine": "gone"}, fallback="code"))
        assert route(http, query)["decision"]["aggregator"] == "code"  # cached decision too
    finally:
        store.clear()
    assert route(http, query)["decision"]["aggregator"] is None
