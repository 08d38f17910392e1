"""The served pool's vLLM engine processes are killed during mixed requests: the replica
restarts them in place (the engine a request was on by that request, which is then
retried; the idle ones by the health probe), no request is lost, and Serve keeps the
replica (its process never died)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from faults import kill_engine_processes, replicas
from loadgen import Fault, MixedLoad
from serving_fixtures import APP

pytestmark = pytest.mark.ray

POOL = "pool-default"


def test_killed_engine_processes_are_restarted_in_place_and_lose_no_request(conclave_server):
    before = replicas(APP, POOL)
    questions = [q for spec in conclave_server.args["experts"] if spec["id"] != "broken"
                 for q in spec.get("examples", [])]
    load = MixedLoad(conclave_server.url, questions, direct=["general"], concurrency=8,
                     max_tokens=4)
    kill = Fault("kill the pool replica's vLLM engine processes",
                 lambda: kill_engine_processes(APP, POOL), after_requests=16)
    report = asyncio.run(load.run(requests=48, faults=[kill]))
    print(report.table())

    [record] = report.faults
    assert not record.error, record.error
    assert [(o.index, o.kind, o.status, o.error) for o in report.outcomes if not o.ok] == []
    assert [r.name for r in replicas(APP, POOL)] == [r.name for r in before]
    health = httpx.get(conclave_server.url + "/healthz", timeout=30)
    assert health.status_code == 200, health.text
