"""Conversation affinity (cluster/serve/affinity.py) when a pool replica dies: conversations
whose turns stuck to the killed replica fall back to the surviving one; no turn is lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import POOL, POOL_REPLICAS
from faults import kill_replica, replicas, wait_replaced

pytestmark = pytest.mark.ray

CONVERSATIONS = 8
FOLLOW_UPS = ["Why?", "Explain step by step.", "Are you sure? Check again.", "And then?"]


def turn(app, index: int, messages: list[dict]) -> tuple[int, str]:
    with httpx.Client(base_url=app.url, timeout=60) as http:
        resp = http.post("/v1/chat/completions", headers={"x-session-id": f"aff-{index}"},
                         json={"model": "conclave:k=1", "max_tokens": 4, "messages": messages})
    messages.append({"role": "assistant", "content": "ok"})
    return resp.status_code, resp.text[:200]


def test_affinity_falls_back_when_its_replica_is_killed(reliability_app):
    app = reliability_app
    assert len(replicas(app.name, POOL)) == POOL_REPLICAS
    questions = app.questions()
    chats = [[{"role": "user", "content": questions[i % len(questions)]}]
             for i in range(CONVERSATIONS)]
    statuses = []
    killed = None
    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        for step, follow_up in enumerate([None, *FOLLOW_UPS]):
            if follow_up:
                for chat in chats:
                    chat.append({"role": "user", "content": follow_up})
            if step == 2:  # conversations have settled on both replicas: kill one
                killed = kill_replica(app.name, POOL)
            statuses += pool.map(turn, [app] * CONVERSATIONS, range(CONVERSATIONS), chats)
    assert len(statuses) == CONVERSATIONS * (len(FOLLOW_UPS) + 1)
    assert [s for s in statuses if s[0] != 200] == []
    wait_replaced(app.name, POOL, killed, POOL_REPLICAS)
