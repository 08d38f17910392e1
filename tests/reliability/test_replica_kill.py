"""An expert-pool replica is killed (``ray.kill`` of its actor) in the middle of 200 mixed
requests: nothing is lost (affected calls fail over or are retried on the surviving
replica), and Serve starts a replacement."""

from __future__ import annotations

import pytest
from conftest import POOL, POOL_REPLICAS

from cluster.faults import kill_replica, replicas, wait_replaced
from cluster.loadgen import Fault

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
