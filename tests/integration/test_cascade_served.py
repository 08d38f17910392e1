"""k: cascade through the deployed app (tiny vLLM model and LoRA experts, real HTTP): an
answer below the confidence threshold goes on to the next expert, one above it stops there,
and a streamed cascade streams the kept answer."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.ray

QUERY = "what is the capital city of peru"


@pytest.fixture(scope="module")
def http(conclave_server):
    with httpx.Client(base_url=conclave_server.url, timeout=120) as client:
        yield client


def cascade(http, threshold: float, **extra):
    resp = http.post("/v1/chat/completions", json={
        "model": f"conclave:k=cascade,k_max=2,threshold={threshold:.6f}", "max_tokens": 6,
        "temperature": 0.0, "messages": [{"role": "user", "content": QUERY}], **extra})
    assert resp.status_code == 200, resp.text
    return resp


def test_escalates_on_an_unsure_answer_and_not_on_a_sure_one(http):
    # Threshold 0: no answer is that sure, so both candidates are asked.
    both = cascade(http, 0.0).json()
    steps = both["conclave"]["cascade"]
    assert both["conclave"]["aggregation"] == "cascade" and len(steps) == 2
    assert steps[0]["expert"] != steps[1]["expert"]
    first = steps[0]["confidence"]  # the top expert's own confidence, greedy: repeatable
    kept = max(steps, key=lambda s: s["confidence"])
    assert kept["kept"] and both["choices"][0]["message"]["content"] is not None
    # Just below the top answer's confidence: it is sure enough, nobody else is asked.
    sure = cascade(http, first - 0.05).json()["conclave"]
    assert [s["expert"] for s in sure["cascade"]] == [steps[0]["expert"]]
    assert [e["id"] for e in sure["experts"]] == [steps[0]["expert"]]
    # Just above it: unsure, escalated to the next expert.
    unsure = cascade(http, min(first + 0.05, 0.0)).json()["conclave"]
    assert [s["expert"] for s in unsure["cascade"]] == [s["expert"] for s in steps]


def test_a_streamed_cascade_streams_the_kept_answer(http):
    whole = cascade(http, 0.0).json()
    text = whole["choices"][0]["message"]["content"]
    parts = []
    with http.stream("POST", "/v1/chat/completions", json={
            "model": "conclave:k=cascade,k_max=2,threshold=0", "max_tokens": 6,
            "temperature": 0.0, "stream": True,
            "messages": [{"role": "user", "content": QUERY}]}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    parts.append(delta[0]["delta"]["content"])
    assert "".join(parts) == text
