"""Stop and start the whole application: every expert comes back from the registry in
Redis, including one added at runtime that no config mentions."""

from __future__ import annotations

import httpx
import pytest
from conftest import deploy
from reliability_http import lora_spec, route

pytestmark = pytest.mark.ray

KEEPER = ["which knot ties a sailing boat to a cleat", "how do I tie a bowline knot"]


def model_ids(app) -> set[str]:
    resp = httpx.get(app.url + "/v1/models", timeout=60)
    assert resp.status_code == 200, resp.text
    return {card["id"] for card in resp.json()["data"]}


def test_restarted_app_brings_every_expert_back(reliability_app):
    from ray import serve

    app = reliability_app
    resp = httpx.post(app.url + "/v1/experts", json=lora_spec(app, "keeper", KEEPER),
                      headers=app.auth, timeout=60)
    assert resp.status_code == 200, resp.text
    before = model_ids(app)
    assert "keeper" in before

    serve.delete(app.name)
    with pytest.raises(httpx.HTTPError):  # really gone: nothing answers there
        httpx.get(app.url + "/v1/models", timeout=10).raise_for_status()
    deploy(app)

    try:
        assert model_ids(app) == before
        with httpx.Client(base_url=app.url, timeout=60) as http:
            decision = route(http, KEEPER[1], "conclave:k=1")["decision"]
        assert decision["experts"] == ["keeper"]  # indexed again from the registry
    finally:
        httpx.delete(app.url + "/v1/experts/keeper", headers=app.auth, timeout=60)
