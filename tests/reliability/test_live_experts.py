"""Experts added and removed through the admin API during a 200-request run: no request
fails, and a removed expert gets no request sent after its removal was acknowledged
(neither as a panel member nor as a failover stand-in)."""

from __future__ import annotations

import httpx
import pytest
from loadgen import Fault
from reliability_http import lora_spec

pytestmark = pytest.mark.ray

EXTRA = ["how long should sourdough bread dough proof", "what flour is best for sourdough"]


def admin_call(app, method: str, path: str, body: dict | None = None) -> dict:
    resp = httpx.request(method, app.url + path, json=body, headers=app.auth, timeout=60)
    resp.raise_for_status()
    return resp.json()


def sent_after(report, record) -> list:
    return [o for o in report.outcomes if o.sent_at > record.done]


def test_experts_added_and_removed_during_a_run(reliability_app):
    app = reliability_app
    math = next(e for e in app.args["experts"] if e["id"] == "math")
    faults = [
        Fault("add extra", lambda: admin_call(app, "POST", "/v1/experts",
                                              lora_spec(app, "extra", EXTRA)),
              after_requests=40),
        Fault("remove math", lambda: admin_call(app, "DELETE", "/v1/experts/math"),
              after_requests=90),
        Fault("remove extra", lambda: admin_call(app, "DELETE", "/v1/experts/extra"),
              after_requests=140),
    ]
    try:
        report = app.run_with_faults(faults, EXTRA)
    finally:
        admin_call(app, "POST", "/v1/experts", math)  # as it was, for the next tests

    added, removed_math, removed_extra = report.faults
    assert [r.error for r in report.faults] == ["", "", ""]
    assert [(o.index, o.status, o.error) for o in report.outcomes if not o.ok] == []
    while_there = [o for o in report.outcomes
                   if added.done < o.sent_at and o.sent_at + o.latency_s < removed_extra.started]
    assert any("extra" in o.experts for o in while_there), "the added expert never answered"
    for record, expert in ((removed_math, "math"), (removed_extra, "extra")):
        late = sent_after(report, record)
        assert late, f"no request was sent after {record.name}"
        reached = [o.index for o in late if expert in o.experts + o.failed]
        assert reached == [], f"{expert} got requests sent after its removal: {reached}"
