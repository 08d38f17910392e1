"""API keys through the gateway's HTTP app without Ray (the real app and service, real
Redis, fake router and experts): 401s with nothing generated, 429s, usage equal to the
sum of a panel's calls, the admin API, bad input, and no plain key anywhere it should
not be."""

from __future__ import annotations

import logging

import pytest
from gateway_fakes import AUTH, gateway_client

from experts.redis_conn import connect

ON = {"enabled": True}
CHAT = {"model": "conclave", "messages": [{"role": "user", "content": "hello there"}]}


def create(client, **spec) -> str:
    resp = client.post("/v1/keys", json={"name": "team-a", **spec}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return resp.json()["key"]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def keyed(redis_url):
    with gateway_client(redis_url, tenants=ON, costs={"alpha": 2.0}) as parts:
        yield parts


@pytest.mark.parametrize("case", ["none", "malformed", "wrong length", "wrong", "revoked",
                                  "expired"])
def test_refused_keys_get_401_and_nothing_is_generated(keyed, case):
    client, backends, _ = keyed
    key = create(client, expires_at="2000-01-01T00:00:00Z" if case == "expired" else None)
    headers = {"none": {}, "malformed": {"Authorization": f"Token {key}"},
               "wrong length": bearer(key + "x"), "wrong": bearer(key[:-1] + "Q"),
               "revoked": bearer(key), "expired": bearer(key)}[case]
    if case == "wrong" and key.endswith("Q"):
        headers = bearer(key[:-1] + "R")
    if case == "revoked":
        assert client.delete("/v1/keys/team-a", headers=AUTH).status_code == 200
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions",
                       {"model": "conclave", "prompt": "hi"}), ("/v1/route", CHAT)):
        resp = client.post(path, json=body, headers=headers)
        assert resp.status_code == 401, resp.text
        error = resp.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        assert resp.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/models", headers=headers).status_code == 401
    assert backends.calls == []
    if case == "malformed":
        assert error["param"] == "authorization"
    if case == "wrong length":
        assert error["param"] == "api_key" and "characters" in error["message"]


def test_key_checked_before_the_body(keyed):
    client, _, _ = keyed
    resp = client.post("/v1/chat/completions", content=b"{not json", headers={})
    assert resp.status_code == 401


def test_panel_usage_is_the_sum_of_its_calls(keyed):
    client, backends, _ = keyed
    key = create(client)
    answers = [client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
               for _ in range(2)]
    streamed = client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                           headers=bearer(key))
    assert all(r.status_code == 200 for r in [*answers, streamed])
    usage = client.get("/v1/usage", headers=bearer(key)).json()
    # k=2 and synthesis: 3 calls per answer, each 3 prompt + 4 completion tokens (fakes)
    assert len(backends.calls) == 9
    said = sum(r.json()["usage"]["total_tokens"] for r in answers) + 21
    assert '"total_tokens":21' in streamed.text.replace(" ", "")
    assert usage["total_tokens"] == said == 63 and usage["requests"] == 3
    per_expert = {e: u["calls"] for e, u in usage["experts"].items()}
    assert per_expert == {e: backends.calls.count(e) for e in set(backends.calls)}
    assert usage["cost_usd"] == pytest.approx(per_expert["alpha"] * 4 * 2.0 / 1e6)
    everyone = client.get("/v1/keys/usage", headers=AUTH).json()["data"]
    assert [u["key"] for u in everyone] == ["team-a"] and everyone[0]["total_tokens"] == 63
    metrics = client.get("/metrics").text
    assert 'conclave_key_tokens_total{key="team-a",kind="completion"} 36.0' in metrics


def test_over_the_limit_429_names_it_and_generates_nothing(keyed):
    client, backends, _ = keyed
    key = create(client, limits={"rpm": 2})
    codes = [client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).status_code
             for _ in range(2)]
    calls = len(backends.calls)
    resp = client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert codes == [200, 200] and resp.status_code == 429
    assert int(resp.headers["retry-after"]) >= 1 and len(backends.calls) == calls
    error = resp.json()["error"]
    assert error["type"] == "rate_limit_error" and error["param"] == "limits.rpm"
    assert "requests per minute limit (2)" in error["message"]
    other = create(client, name="team-b")
    assert client.post("/v1/chat/completions", json=CHAT,
                       headers=bearer(other)).status_code == 200


def test_allowed_experts_steer_the_panel_and_refuse_others(keyed):
    client, backends, _ = keyed
    key = create(client, experts=["beta", "gamma"])
    resp = client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert resp.status_code == 200
    assert {e["id"] for e in resp.json()["conclave"]["experts"]} == {"beta", "gamma"}
    assert "alpha" not in backends.calls
    routed = client.post("/v1/route", json=CHAT, headers=bearer(key)).json()
    assert set(routed["decision"]["experts"]) == {"beta", "gamma"}
    direct = client.post("/v1/chat/completions", json={**CHAT, "model": "alpha"},
                         headers=bearer(key))
    assert direct.status_code == 403 and direct.json()["error"]["param"] == "model"


@pytest.mark.parametrize(("spec", "param"), [
    ({"limits": {"rpm": 0}}, "limits.rpm"), ({"limits": {"tpm": -1}}, "limits.tpm"),
    ({"limits": {"budget_tokens": 0}}, "limits.budget_tokens"), ({"name": "Bad Name"}, "name"),
    ({"limits": {"per_day": 3}}, "limits.per_day")])
def test_bad_key_specs_are_400_naming_the_field(keyed, spec, param):
    client, _, _ = keyed
    resp = client.post("/v1/keys", json={"name": "ok", **spec}, headers=AUTH)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param


def test_key_admin_needs_the_admin_token_not_an_api_key(keyed):
    client, _, _ = keyed
    key = create(client)
    assert client.get("/v1/keys", headers=bearer(key)).status_code == 401
    assert client.post("/v1/keys", json={"name": "x"}).status_code == 401
    assert client.delete("/v1/keys/nobody", headers=AUTH).status_code == 404


def test_no_plain_key_in_redis_logs_or_responses(keyed, redis_url, caplog):
    client, _, _ = keyed
    caplog.set_level(logging.DEBUG)
    key = create(client)
    secret = key[11:]
    seen = [client.get("/v1/keys", headers=AUTH).text,
            client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)).text,
            client.get("/v1/usage", headers=bearer(key)).text,
            client.post("/v1/chat/completions", json=CHAT, headers=bearer(key + "x")).text,
            client.post("/v1/chat/completions", json=CHAT, headers=bearer(key[:-1] + "!")).text,
            client.get("/metrics").text, client.delete("/v1/keys/team-a", headers=AUTH).text]
    redis = connect(redis_url)
    for name in redis.keys("*"):
        kind = redis.type(name)
        value = {"string": redis.get, "hash": redis.hgetall, "set": redis.smembers,
                 "zset": lambda n: redis.zrange(n, 0, -1)}.get(kind, lambda n: "")(name)
        seen.append(f"{name} {value}")
    seen += [record.getMessage() for record in caplog.records]
    assert all(secret not in text for text in seen)


def test_keys_off_leaves_the_endpoints_open(redis_url):
    with gateway_client(redis_url) as (client, _, _):
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.get("/v1/usage").status_code == 404
        assert client.post("/v1/keys", json={"name": "a"}, headers=AUTH).json()["error"][
            "code"] == "keys_disabled"


@pytest.fixture()
def served_keys(redis_url):
    """The keyed gateway app on a real port (uvicorn in a thread), for the CLI."""
    import threading
    import time

    import uvicorn
    from serving_fixtures import free_port

    with gateway_client(redis_url, tenants=ON) as (client, _, _):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(client.app, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        thread.join(10)


def test_cli_creates_lists_and_revokes_keys(served_keys):
    import httpx
    from click.testing import CliRunner

    from cluster.cli import main

    runner = CliRunner()
    where = ["--url", served_keys, "--token", AUTH["Authorization"].split()[1]]
    made = runner.invoke(main, ["keys", "create", "team-a", "--rpm", "5", *where])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[0]
    chat = httpx.post(served_keys + "/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert chat.status_code == 200
    listed = runner.invoke(main, ["keys", "list", *where])
    assert "team-a" in listed.output and '"rpm": 5' in listed.output and key not in listed.output
    usage = runner.invoke(main, ["keys", "usage", *where])
    assert '"total_tokens": 21' in usage.output
    assert runner.invoke(main, ["keys", "revoke", "team-a", *where]).exit_code == 0
    again = runner.invoke(main, ["keys", "revoke", "team-a", *where])
    assert again.exit_code != 0 and "no live key named 'team-a'" in again.output


@pytest.mark.parametrize(("args", "field"), [(["--rpm", "0"], "limits.rpm"),
                                             (["--tpm", "-3"], "limits.tpm"),
                                             (["--budget-tokens", "0"], "limits.budget_tokens")])
def test_cli_refuses_bad_limits_naming_the_field(args, field):
    from click.testing import CliRunner

    from cluster.cli import main

    result = CliRunner().invoke(main, ["keys", "create", "team-a", *args, "--url",
                                       "http://127.0.0.1:9", "--token", "t"])
    assert result.exit_code != 0 and f"error: {field}: Input should be greater than 0" in \
        result.output
