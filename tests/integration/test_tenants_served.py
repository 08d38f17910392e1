"""API keys on the served app (real Ray + Serve, vLLM on the tiny LM): the shared test
app deployed once more under ``/tenants`` with keys on, two gateway replicas and its own
Redis (stopped by the outage test).

401s generate nothing (the pool's rows served do not move); one rpm holds across both
gateway replicas; a panel's usage is the sum of its calls; the stock ``openai`` client
works with ``api_key=``; no plain key in Redis or in any log; Redis down: known keys are
served from the local copy, new keys get 503, no request is lost, no usage either.
"""

from __future__ import annotations

import copy
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serving_fixtures import ADMIN_TOKEN, app_args, broken_model

pytestmark = pytest.mark.ray

APP, PREFIX = "tenants", "/tenants"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "conclave", "max_tokens": 4,
        "messages": [{"role": "user", "content": "what is the derivative of x squared"}]}


@dataclass
class KeyedApp:
    url: str
    redis: object  # faults.RestartableRedis

    def create(self, name: str, **spec) -> str:
        resp = httpx.post(self.url + "/v1/keys", json={"name": name, **spec}, headers=ADMIN,
                          timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()["key"]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed_app(serve_instance, tiny_lm, tiny_adapters, tmp_path_factory):
    from faults import RestartableRedis
    from ray import serve

    from cluster.deploy.local import wait_for_expert
    from cluster.serve.app import build_app

    redis = RestartableRedis(tempfile.mkdtemp(prefix="cten-")).start()
    base = tmp_path_factory.getbasetemp()
    args = copy.deepcopy(app_args(redis.url, tiny_lm, tiny_adapters,
                                  broken_model(tmp_path_factory.mktemp("ten-broken")),
                                  [str(base)]))
    args["redis"]["namespace"] = "tenants"
    args["experts"] = [e for e in args["experts"] if e["id"] != "broken"]
    args["serving"]["num_replicas"] = 2
    args["tenants"] = {"enabled": True}
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    app = KeyedApp(serve_instance + PREFIX, redis)
    warm = app.create("warm-up")
    wait_for_expert(app.url, "general", headers=bearer(warm))
    yield app
    serve.delete(APP)
    redis.stop()


def rows_served() -> int:
    """Rows the app's pool replicas generated so far."""
    from ray import serve

    handle = serve.get_deployment_handle("pool-default", APP)
    return handle.stats.remote().result(timeout_s=60)["rows_served"]


def test_refused_keys_get_401_and_nothing_is_generated(keyed_app):
    app = keyed_app
    live = app.create("live")
    revoked = app.create("revoked")
    expired = app.create("expired", expires_at="2001-01-01T00:00:00Z")
    assert httpx.delete(app.url + "/v1/keys/revoked", headers=ADMIN).status_code == 200
    before = rows_served()
    for headers in ({}, bearer(live[:-1] + ("a" if live[-1] != "a" else "b")),
                    bearer(revoked), bearer(expired), {"Authorization": live}):
        for stream in (False, True):
            resp = httpx.post(app.url + "/v1/chat/completions", json={**CHAT, "stream": stream},
                              headers=headers, timeout=60)
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"]["code"] == "invalid_api_key"
    assert rows_served() == before


def test_one_rpm_limit_across_two_gateway_replicas(keyed_app):
    from ray import serve

    app = keyed_app
    gateway = serve.status().applications[APP].deployments["gateway"]
    assert gateway.replica_states.get("RUNNING") == 2
    limited, other = app.create("limited", limits={"rpm": 6}), app.create("other")

    def ask(key: str) -> int:
        return httpx.post(app.url + "/v1/route", json=CHAT, headers=bearer(key),
                          timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(ask, [limited, other] * 15))
    assert codes[0::2].count(200) == 6 and codes[0::2].count(429) == 9
    assert codes[1::2] == [200] * 15  # the limited key does not starve the other
    # each replica counts what it admitted: both took a share of the six ({3}: both 3)
    assert admitted_by_replica(app, "limited") in ({3}, {1, 5}, {2, 4})


def admitted_by_replica(app: KeyedApp, key: str, rounds: int = 10) -> set[int]:
    """The values of ``key``'s admitted counter seen over ``/metrics`` scrapes, 8 at once per
    round (Serve's proxy sends each to one of the two gateway replicas: sent one at a time,
    all can go to the same one); 0 where a replica has none."""
    line = f'conclave_key_requests_total{{key="{key}",outcome="admitted"}} '

    def scrape(_index: int) -> int:
        text = httpx.get(app.url + "/metrics", timeout=30).text
        found = [float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)]
        return int(found[0]) if found else 0

    seen: set[int] = set()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(rounds):
            seen.update(pool.map(scrape, range(8)))
            if len(seen) == 2:
                break
    return seen


def test_a_revoked_key_is_refused_by_both_replicas_within_a_second(keyed_app):
    app = keyed_app
    key = app.create("short-lived")

    def ask(_index: int) -> int:
        return httpx.post(app.url + "/v1/route", json=CHAT, headers=bearer(key),
                          timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(ask, range(16))) == {200}  # both replicas hold a fresh copy
        assert httpx.delete(app.url + "/v1/keys/short-lived", headers=ADMIN).status_code == 200
        time.sleep(1.0)
        assert set(pool.map(ask, range(16))) == {401}


def test_stock_openai_client_and_panel_usage(keyed_app):
    import openai

    app = keyed_app
    key = app.create("panel")
    client = openai.OpenAI(base_url=app.url + "/v1", api_key=key, max_retries=0)
    assert "general" in [m.id for m in client.models.list()]
    replies = [client.chat.completions.create(model="conclave", max_tokens=4,
                                              messages=CHAT["messages"]) for _ in range(2)]
    stream = client.chat.completions.create(model="conclave", max_tokens=4, stream=True,
                                            messages=CHAT["messages"],
                                            stream_options={"include_usage": True})
    streamed = [chunk.usage for chunk in stream if chunk.usage is not None]
    said = sum(r.usage.total_tokens for r in replies) + streamed[-1].total_tokens
    usage = httpx.get(app.url + "/v1/usage", headers=bearer(key), timeout=30).json()
    assert usage["total_tokens"] == said > 0 and usage["requests"] == 3
    panel_calls = sum(len(r.conclave["experts"]) + bool(r.conclave["aggregator"])
                      for r in replies)
    assert sum(e["calls"] for e in usage["experts"].values()) >= panel_calls
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=app.url + "/v1", api_key="ck-" + "x" * 48,
                      max_retries=0).models.list()
    tight = openai.OpenAI(base_url=app.url + "/v1", api_key=app.create("tight",
                          limits={"rpm": 1}), max_retries=0)
    tight.models.list()  # listing models does not count
    tight.chat.completions.create(model="general", max_tokens=1, messages=CHAT["messages"])
    with pytest.raises(openai.RateLimitError) as caught:
        tight.chat.completions.create(model="general", max_tokens=1, messages=CHAT["messages"])
    assert caught.value.response.headers["retry-after"]


def test_no_plain_key_in_redis_or_logs(keyed_app):
    import ray

    from experts.redis_conn import connect

    app = keyed_app
    key = app.create("secretive")
    assert httpx.post(app.url + "/v1/chat/completions", json=CHAT, headers=bearer(key),
                      timeout=60).status_code == 200
    httpx.post(app.url + "/v1/chat/completions", json=CHAT, headers=bearer(key + "Z"))
    secret = key[11:]
    redis = connect(app.redis.url)
    for name in redis.keys("*"):
        assert secret not in name and secret.encode() not in (redis.dump(name) or b"")
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    for path in logs.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_redis_down_known_keys_served_new_keys_503_nothing_lost(keyed_app):
    app = keyed_app
    known, unseen = app.create("known"), app.create("unseen")

    def chat(key: str) -> httpx.Response:
        return httpx.post(app.url + "/v1/chat/completions", json=CHAT, headers=bearer(key),
                          timeout=60)

    with ThreadPoolExecutor(8) as pool:  # both gateway replicas read the known key
        warm = list(pool.map(chat, [known] * 8))
    app.redis.stop()
    try:
        with ThreadPoolExecutor(8) as pool:
            dark = list(pool.map(chat, [known] * 8))
        refused = chat(unseen)
    finally:
        app.redis.start()
    assert [r.status_code for r in dark] == [200] * 8
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "key_store_unavailable"
    said = sum(r.json()["usage"]["total_tokens"] for r in warm + dark)
    deadline = time.monotonic() + 15  # each gateway replica writes what waited within ~1 s
    while True:
        usage = httpx.get(app.url + "/v1/usage", headers=bearer(known), timeout=30).json()
        if usage["total_tokens"] == said or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert usage["total_tokens"] == said
