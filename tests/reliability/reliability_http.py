"""Small HTTP helpers for the reliability tests."""

from __future__ import annotations

import time

import httpx


def wait_for(predicate, what: str, deadline_s: float = 60.0) -> None:
    """Poll until ``predicate()`` holds (notifications and restarts are asynchronous)."""
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"never happened within {deadline_s:g}s: {what}")
        time.sleep(0.3)


def route(http: httpx.Client, query: str, model: str = "conclave") -> dict:
    """The router's dry-run decision for ``query``."""
    resp = http.post("/v1/route", json={"query": query, "model": model})
    assert resp.status_code == 200, resp.text
    return resp.json()


def lora_spec(app, expert_id: str, examples: list[str]) -> dict:
    """A new LoRA expert on the app's base model, reusing one of its adapters' weights."""
    adapter = next(e["adapter"] for e in app.args["experts"] if e.get("kind") == "lora")
    return {"id": expert_id, "kind": "lora", "base": "general", "adapter": adapter,
            "description": f"{expert_id} questions", "examples": examples}
