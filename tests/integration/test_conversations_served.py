"""Conversations through the deployed app over real HTTP, with two gateway replicas: a
session keeps its expert then switches; both replicas see one decision; the session
survives a gateway restart (it lives in Redis); the Responses API through the stock
``openai`` client, chained, streamed and not."""

from __future__ import annotations

import concurrent.futures
import copy

import httpx
import openai
import pytest
from faults import kill_replica, replicas
from prometheus_client.parser import text_string_to_metric_families
from serving_fixtures import app_args, broken_model

pytestmark = pytest.mark.ray

APP, PREFIX = "conversations", "/conversations"
MATH = "what is the derivative of x to the fourth"
CODE = "write a python function that reverses a list of words"
FOLLOW_UPS = ["Why?", "Explain step by step.", "Are you sure? Check again."]


@pytest.fixture(scope="module")
def app_url(serve_instance, serving_redis, tiny_lm, tiny_adapters, tmp_path_factory):
    from ray import serve

    from cluster.deploy.local import wait_for_expert
    from cluster.serve.app import build_app

    base = tmp_path_factory.getbasetemp()
    args = copy.deepcopy(app_args(serving_redis, tiny_lm, tiny_adapters,
                                  broken_model(tmp_path_factory.mktemp("conv-broken")),
                                  [str(base)]))
    args["redis"]["namespace"] = "conv"
    args["experts"] = [e for e in args["experts"] if e["id"] != "broken"]
    args["serving"]["num_replicas"] = 2
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    url = serve_instance + PREFIX
    wait_for_expert(url, "general")
    yield url
    serve.delete(APP)


def ask(http, messages, session):
    resp = http.post("/v1/chat/completions", headers={"x-session-id": session}, json={
        "model": "conclave:k=1", "max_tokens": 4, "messages": messages})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert resp.headers["x-conclave-session-outcome"] == body["conclave"]["session"]["outcome"]
    return body["conclave"]["session"]["outcome"], body["conclave"]["experts"][0]["id"]


def conversation(http, session, questions):
    """Each question a turn of one conversation; (outcome, expert) per turn."""
    messages, seen = [], []
    for question in questions:
        messages.append({"role": "user", "content": question})
        outcome, expert = ask(http, messages, session)
        seen.append((outcome, expert))
        messages.append({"role": "assistant", "content": "noted"})
    return seen


def session_counts(url: str) -> set[tuple[float, float, float]]:
    """Each gateway replica's (new, kept, switched) session counts, from 8 scrapes at once
    (Serve's proxy spreads them over the replicas)."""
    def scrape(_):
        counts = {"new": 0.0, "kept": 0.0, "switched": 0.0}
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
            for sample in family.samples:
                if sample.name == "conclave_sessions_total":
                    counts[sample.labels["outcome"]] = sample.value
        return counts["new"], counts["kept"], counts["switched"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return set(pool.map(scrape, range(8)))


def test_a_session_keeps_its_expert_then_switches_and_replicas_share_it(app_url):
    with httpx.Client(base_url=app_url, timeout=120) as http:
        seen = conversation(http, "served-1", [MATH, *FOLLOW_UPS, CODE])
    assert [o for o, _ in seen] == ["new", "kept", "kept", "kept", "switched"], seen
    assert {e for _, e in seen[:4]} == {"math"} and seen[4][1] == "code"
    # with two gateway replicas, both served turns of the session: one "new" in all
    counts = set()
    for _ in range(5):
        counts |= session_counts(app_url)
        if len(counts) == 2:
            break
    assert len(counts) == 2, counts
    assert tuple(map(sum, zip(*counts, strict=True))) == (1.0, 3.0, 1.0)


def test_a_session_survives_a_gateway_restart(app_url):
    with httpx.Client(base_url=app_url, timeout=120) as http:
        assert conversation(http, "served-2", [MATH])[0] == ("new", "math")
        for _ in replicas(APP, "gateway"):
            kill_replica(APP, "gateway")
        from cluster.deploy.local import wait_for_expert

        wait_for_expert(app_url, "general")  # answered by a new gateway replica
        history = [{"role": "user", "content": MATH}, {"role": "assistant", "content": "."},
                   {"role": "user", "content": "Why?"}]
        assert ask(http, history, "served-2") == ("kept", "math")


def test_responses_api_through_the_stock_client(app_url):
    client = openai.OpenAI(base_url=app_url + "/v1", api_key="unused", max_retries=0)
    first = client.responses.create(model="conclave:k=1", input=MATH, max_output_tokens=4,
                                    instructions="Answer briefly.")
    assert first.status == "completed" and isinstance(first.output_text, str)
    assert first.conclave["session"] == {"id": first.id, "outcome": "new"}
    second = client.responses.create(model="conclave:k=1", input="Why?", max_output_tokens=4,
                                     previous_response_id=first.id)
    assert second.conclave["session"] == {"id": first.id, "outcome": "kept"}
    events = list(client.responses.create(model="conclave:k=1", input="Explain step by step.",
                                          max_output_tokens=4, stream=True,
                                          previous_response_id=second.id))
    done = events[-1]
    assert done.type == "response.completed", [e.type for e in events]
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == done.response.output_text
    assert done.response.conclave["session"]["outcome"] == "kept"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="conclave", input="x", previous_response_id="resp_gone")
