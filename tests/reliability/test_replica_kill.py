"""An expert-pool replica, then a router replica, is killed (``ray.kill`` of its actor) in
the middle of mixed requests: nothing is lost (affected calls fail over or are retried on
the surviving replica), and Serve starts a replacement."""

from __future__ import annotations

import pytest
from conftest import POOL, POOL_REPLICAS, ROUTER_REPLICAS
from faults import crash_replica, kill_replica, replicas, wait_replaced
from loadgen import Fault

pytestmark = pytest.mark.ray


def test_killed_expert_replica_loses_no_request(reliability_app):
    app = reliability_app
    assert len(replicas(app.name, POOL)) == POOL_REPLICAS
    kill = Fault("kill an expert-pool replica", lambda: kill_replica(app.name, POOL),
                 after_requests=60)
    report = app.run_with_faults([kill])

    [record] = report.faults
    assert not record.error, record.error
    failures = [(o.index, o.kind, o.status, o.error) for o in report.outcomes if not o.ok]
    assert report.summary()["requests"] == 200
    assert failures == []
    replaced = wait_replaced(app.name, POOL, record.result, POOL_REPLICAS)
    assert record.result.name not in {r.name for r in replaced}


def test_crashed_router_replica_loses_no_request(reliability_app):
    """A router replica freezes, then dies: Serve routes around it (calls caught on it are
    sent again by the gateway, see tests/unit/test_gateway_calls.py); nothing fails."""
    app = reliability_app
    assert len(replicas(app.name, "router")) == ROUTER_REPLICAS
    kill = Fault("crash a router replica with calls in flight",
                 lambda: crash_replica(app.name, "router", stall_s=1.0), after_requests=60)
    report = app.run_with_faults([kill], requests=120)

    [record] = report.faults
    assert not record.error, record.error
    failures = [(o.index, o.kind, o.status, o.error) for o in report.outcomes if not o.ok]
    assert report.summary()["requests"] == 120
    assert failures == []
    retries = metric_total(app.url, "conclave_replica_retries", deployment="router")
    print(f"routing calls sent again to the other replica: {retries:g}")
    replaced = wait_replaced(app.name, "router", record.result, ROUTER_REPLICAS)
    assert record.result.name not in {r.name for r in replaced}


def metric_total(url: str, family: str, **labels) -> float:
    """The sum of a counter's ``_total`` samples on ``/metrics`` matching ``labels``."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == family
               for s in f.samples if s.name.endswith("_total")
               and all(s.labels.get(k) == v for k, v in labels.items()))
