"""Redis (the registry and the pattern cache) is stopped in the middle of 200 mixed
requests and started again: no request fails, routing carries on uncached while it is
down, and afterwards the cache and the registry's notifications work again."""

from __future__ import annotations

import httpx
import pytest
from loadgen import Fault
from reliability_http import lora_spec, route, wait_for

pytestmark = pytest.mark.ray

LATE = ["how long should sourdough bread dough proof", "what flour is best for sourdough"]


def test_redis_outage_fails_no_request(reliability_app):
    app = reliability_app
    outage = Fault("Redis down for 3 s", lambda: app.redis.outage(3.0), after_requests=40)
    report = app.run_with_faults([outage])

    [record] = report.faults
    assert not record.error, record.error
    assert [(o.index, o.status, o.error) for o in report.outcomes if not o.ok] == []
    down_at, up_at = record.result
    dark = [o for o in report.outcomes if o.kind != "direct"
            and down_at <= o.sent_at and o.sent_at + o.latency_s <= up_at]
    assert dark, "no routed request ran while Redis was down"
    assert {c for o in dark for c in o.cache} == {"miss"}  # routed, uncached


def test_cache_and_notifications_resume_after_redis_restart(reliability_app):
    app = reliability_app
    app.redis.outage(1.0)
    with httpx.Client(base_url=app.url, timeout=60, headers=app.auth) as http:
        query = "what is the derivative of x to the fifth"
        wait_for(lambda: route(http, query)["cache"] == "hit", "the pattern cache answers again")

        resp = http.post("/v1/experts", json=lora_spec(app, "late", LATE))
        assert resp.status_code == 200, resp.text
        try:
            # The registry's notification (or, failing it, the catalog's version check) tells
            # the router about a new expert: it is then scored (ranked) for every query.
            wait_for(lambda: "late" in ranked(route(http, LATE[0], "conclave:k=1")),
                     "the router indexes an expert added after the restart")
        finally:
            assert http.delete("/v1/experts/late").status_code == 200
        wait_for(lambda: "late" not in ranked(route(http, LATE[0])),
                 "the router forgets the removed expert")


def ranked(routed: dict) -> list[str]:
    """The experts a routing decision scored, best first."""
    return [expert for expert, _ in routed["decision"]["ranked"]]
