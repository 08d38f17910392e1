"""Sessions while Redis is down: turns are routed without their sessions (outcome
``stateless``, counted), no request fails, chat or Responses; once Redis is back the
session's stored decision applies again."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.ray

QUESTION = "what is the derivative of x to the seventh"


def ask(http, messages, session="outage-1"):
    resp = http.post("/v1/chat/completions", headers={"x-session-id": session},
                     json={"model": "conclave:k=1", "max_tokens": 4, "messages": messages})
    assert resp.status_code == 200, resp.text
    return resp.json()["conclave"]["session"]["outcome"]


def test_redis_down_sessions_are_stateless_and_nothing_fails(reliability_app):
    app = reliability_app
    follow = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "."},
              {"role": "user", "content": "Why?"}]
    with httpx.Client(base_url=app.url, timeout=60) as http:
        assert ask(http, follow[:1]) == "new"
        outage = threading.Thread(target=app.redis.outage, args=(4.0,))
        outage.start()
        time.sleep(0.5)  # stopping saves first
        during = []
        while outage.is_alive():
            during.append(ask(http, follow))
            resp = http.post("/v1/responses", json={"model": "conclave:k=1", "input": "hi",
                                                    "max_output_tokens": 4})
            assert resp.status_code == 200, resp.text
        outage.join()
        assert "stateless" in during and set(during) <= {"stateless", "kept"}
        deadline = time.monotonic() + 30
        while ask(http, follow) != "kept":  # the store is asked again after retry_s
            assert time.monotonic() < deadline, "the session never came back"
            time.sleep(1)
        metrics = http.get("/metrics").text
    assert 'conclave_sessions_total{outcome="stateless"}' in metrics
