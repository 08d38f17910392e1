"""Conclave on a real multi-node Ray cluster on this machine: a head and worker raylets
(:mod:`cluster.local_cluster`), a real Redis over TCP, the demo pool.

- head (``frontend``): Serve's controller and HTTP proxy, the gateway and the router;
- workers ``a`` and ``b`` (``expert-node: 1`` each, one pool replica apiece);
- ``c`` (``expert-node: 2``) joins during load and gets the replica the pool's autoscaler
  asked for; then ``a`` is killed during 200 mixed requests and its replica is rescheduled
  on ``c``.

One cluster and one deployment for the module, so the tests run in order and build on
each other. The cluster is driven from a child process (tests/multinode/cluster_process.py
says why); the load goes over HTTP from this process.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import pytest
from cluster_process import (
    ClusterCallError,
    ClusterProcess,
    add_node,
    build,
    deploy,
    node_names,
    pool_stats,
    remove_node,
    replica_nodes,
    start,
    wait_replica_nodes,
)
from loadgen import Fault, MixedLoad
from local_cluster import NodeSpec

pytestmark = pytest.mark.ray

APP = "multinode"
POOL = "pool-default"
TOKEN = "multinode-admin-token"
HEAD = NodeSpec("head", num_cpus=1, resources={"frontend": 10})
WORKERS = [NodeSpec("a", num_cpus=1, resources={"expert-node": 1}),
           NodeSpec("b", num_cpus=1, resources={"expert-node": 1})]
LATE = NodeSpec("c", num_cpus=1, resources={"expert-node": 2})
CONCURRENCY = 8


def app_args(redis_url: str) -> dict:
    """The demo pool, the pool on ``expert-node`` nodes (2 to 3 replicas, scaling up after
    a second of load, never down during the test: with 8 clients a batch per engine is
    nearly always in flight, over the 0.5 per replica asked), router and gateway on
    ``frontend``. The pool runs the transformers engine: placement, node loss and
    scale-out are what is tested here. Every "node" of this cluster shares the same 2
    cores, so a joining node's vLLM engines start under the serving nodes' load: measured,
    the third replica was still not RUNNING 150 s (8 clients) and 240 s (3 clients) after
    ``c`` joined, where one engine starts in about 20 s on an idle machine. On a real
    cluster a new node brings its own cores. vLLM engines are started, killed and
    restarted under load in tests/integration/test_engine_kill_served.py."""
    return {
        "demo_pool": True,
        "redis": {"url": redis_url, "namespace": "multinode"},
        "routing": {"k": 2, "resources": {"frontend": 1}},
        "pools": [{"name": "default", "engine": "hf", "num_cpus": 0,
                   "resources": {"expert-node": 1},
                   "max_resident_models": 2, "max_batch_size": 16,
                   "batch_wait_timeout_s": 0.01,
                   "autoscaling": {"min_replicas": 2, "max_replicas": 3,
                                   "target_ongoing_requests": 0.5, "upscale_delay_s": 1,
                                   "downscale_delay_s": 600}}],
        "serving": {"resources": {"frontend": 1}, "admin_token": TOKEN,
                    "max_tokens_limit": 64, "request_timeout_s": 120,
                    "expert_timeout_s": 60},
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster process, with head, ``a``, ``b`` and the TCP Redis up."""
    proc = ClusterProcess()
    try:
        info = proc.call(start, HEAD, WORKERS, str(tmp_path_factory.mktemp("mn-redis")))
        yield proc, info
    finally:
        proc.close()


@pytest.fixture(scope="module")
def app(cluster):
    """The app deployed on the cluster; yields (cluster process, base URL)."""
    proc, info = cluster
    url = proc.call(deploy, app_args(info["redis_url"]), APP)
    return proc, url


def demo_questions() -> list[str]:
    from experts.demo import PROFILES

    return [text for profile in PROFILES for text in profile["examples"]]


def run_load(url: str, faults: list, **bounds):
    load = MixedLoad(url, demo_questions(), direct=["math", "code-base"],
                     concurrency=CONCURRENCY, max_tokens=4)
    report = asyncio.run(load.run(faults=faults, **bounds))
    print(report.table())
    return report


def lost(report) -> list[tuple]:
    return [(o.index, o.kind, o.status, o.error) for o in report.outcomes if not o.ok]


def ask(url: str, model: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "model": model, "max_tokens": 4,
        "messages": [{"role": "user", "content": "How do sedimentary rocks form?"}]})


def stats_until(proc, nodes: set[str], ready, timeout_s: float = 60.0) -> dict[str, dict]:
    """Sample the pool replicas' ``stats()`` until those on every node of ``nodes``
    satisfy ``ready(stats)``; returns the last sample by node."""
    deadline = time.monotonic() + timeout_s
    while True:
        by_node = proc.call(pool_stats, POOL)
        if set(by_node) >= nodes and all(ready(by_node[n]) for n in nodes):
            return by_node
        if time.monotonic() > deadline:
            raise AssertionError(f"not every node of {sorted(nodes)} got there: {by_node}")
        time.sleep(0.5)


def test_bad_placement_and_a_node_local_redis_are_refused_at_deploy(cluster):
    proc, info = cluster
    stray = app_args(info["redis_url"])
    stray["pools"][0]["resources"] = {"tpu-worker": 1}
    with pytest.raises(ClusterCallError, match=r"deployment 'pool-default' needs "
                       r"\{tpu-worker: 1\} per replica, and no node has that"):
        proc.call(build, stray, timeout_s=60)
    with pytest.raises(ClusterCallError, match=r"multi-node cluster \(nodes 3 alive\)"):
        proc.call(build, app_args("embedded"), timeout_s=60)


def test_pools_land_only_on_nodes_with_their_resources(app):
    proc, url = app
    assert proc.call(replica_nodes, POOL) == ["a", "b"]
    assert proc.call(replica_nodes, "router") == ["head"]
    assert proc.call(replica_nodes, "gateway") == ["head"]
    assert ask(url, "conclave").status_code == 200


def test_a_registry_change_reaches_replicas_on_every_node(app):
    from experts.demo import demo_root
    from experts.redis_conn import cache_dir
    from experts.tiny import add_random_lora

    proc, url = app
    auth = {"Authorization": f"Bearer {TOKEN}"}
    adapter = add_random_lora(demo_root() / "general-base", cache_dir() / "mn" / "geology",
                              seed=7, scale=0.3)
    spec = {"id": "geology", "kind": "lora", "base": "general-base", "adapter": str(adapter),
            "examples": ["How do sedimentary rocks form?"]}
    assert httpx.post(url + "/v1/experts", json=spec, headers=auth).status_code == 200
    stats_until(proc, {"a", "b"}, lambda s: "geology" in s["experts"])
    assert ask(url, "geology").status_code == 200

    assert httpx.delete(url + "/v1/experts/geology", headers=auth).status_code == 200
    stats_until(proc, {"a", "b"}, lambda s: "geology" not in s["experts"])
    assert ask(url, "geology").status_code == 404


def test_a_path_missing_on_the_serving_node_fails_clearly_and_shows_unhealthy(app):
    """Registered while the folder exists, then gone where the replicas run: the expert
    stays listed, its load fails with the reason, /healthz reports it."""
    from experts.redis_conn import cache_dir

    proc, url = app
    auth = {"Authorization": f"Bearer {TOKEN}"}
    folder = cache_dir() / "mn" / "far"
    shutil.copytree(cache_dir() / "mn" / "geology", folder, dirs_exist_ok=True)
    spec = {"id": "far", "kind": "lora", "base": "general-base", "adapter": str(folder)}
    assert httpx.post(url + "/v1/experts", json=spec, headers=auth).status_code == 200
    shutil.rmtree(folder)
    stats_until(proc, {"a", "b"}, lambda s: "far" in s["experts"])  # listed, not dropped

    resp = ask(url, "far")
    assert resp.status_code == 502
    assert "does not exist on this node" in resp.json()["error"]["message"]
    unhealthy = httpx.get(url + "/healthz").json()["unhealthy"]
    assert "does not exist on this node" in unhealthy["far"]
    assert httpx.delete(url + "/v1/experts/far", headers=auth).status_code == 200


def test_a_node_added_during_load_gets_a_replica_and_serves(app):
    """Under load the autoscaler wants a third replica, which no node has room for until
    ``c`` joins; the load ends once that replica has generated rows."""
    proc, url = app

    def add_c_until_it_serves():
        proc.call(add_node, LATE)
        nodes = proc.call(wait_replica_nodes, POOL, ["a", "b", "c"], 240, timeout_s=270)
        stats_until(proc, {"c"}, lambda s: s["rows_served"] > 0, timeout_s=60)
        return nodes

    fault = Fault("add node c", add_c_until_it_serves, after_requests=CONCURRENCY)
    report = run_load(url, [fault], duration_s=330, until_faults_done=True)
    [record] = report.faults
    assert not record.error, record.error
    assert record.result == ["a", "b", "c"]
    assert lost(report) == []


def test_a_worker_node_lost_during_200_requests_loses_none(app):
    """``a`` is killed (raylet and workers) with requests in flight: calls caught on it are
    retried or failed over, and its replica is rescheduled on ``c``, which has room (``c``
    joined in the test before; it joins here when that test did not run)."""
    proc, url = app
    if "c" not in proc.call(node_names):
        proc.call(add_node, LATE)
    kill = Fault("kill node a", lambda: proc.call(remove_node, "a"), after_requests=40)
    report = run_load(url, [kill], requests=200)
    [record] = report.faults
    assert not record.error, record.error
    assert report.summary()["requests"] == 200
    assert lost(report) == []
    deadline = time.monotonic() + 180
    while (nodes := proc.call(replica_nodes, POOL)).count("c") < 1 or "a" in nodes:
        assert time.monotonic() < deadline, f"replicas still on {nodes}"
        time.sleep(2)
    assert set(nodes) <= {"b", "c"} and len(nodes) >= 2
    assert ask(url, "conclave").status_code == 200
