"""Security over real HTTP against the deployed app: the admin API wants the bearer token,
local paths outside the allowed roots are refused, body and ``max_tokens`` limits hold,
and no secret (admin token, Redis password) shows up in responses or in any Ray log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import ADMIN_TOKEN, REDIS_PASSWORD
from reliability_http import lora_spec

pytestmark = pytest.mark.ray

SECRETS = (ADMIN_TOKEN, REDIS_PASSWORD)
ADMIN_CALLS = [("GET", "/v1/experts"), ("POST", "/v1/experts"), ("DELETE", "/v1/experts/math")]
BAD_AUTH = [None, "Bearer", "Bearer wrong-token", f"Basic {ADMIN_TOKEN}",
            f"Bearer {ADMIN_TOKEN}x", f"Bearer {ADMIN_TOKEN[:-1]}"]


@pytest.fixture(scope="module")
def http(reliability_app):
    with httpx.Client(base_url=reliability_app.url, timeout=60) as client:
        yield client


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("method,path", ADMIN_CALLS)
@pytest.mark.parametrize("auth", BAD_AUTH)
def test_admin_refuses_without_the_right_token(http, reliability_app, method, path, auth):
    headers = {"Authorization": auth} if auth else {}
    body = lora_spec(reliability_app, "intruder", ["x"]) if method == "POST" else None
    resp = http.request(method, path, headers=headers, json=body)
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"] == "Bearer"
    assert resp.json()["error"]["type"] == "authentication_error"
    assert_no_secret(resp.text)
    assert {"math"} <= {e["id"] for e in http.get("/v1/experts", headers=reliability_app.auth)
                        .json()["data"]}


def _outside_paths(root: Path, tmp_path: Path) -> dict[str, str]:
    escape = tmp_path / "escape-link"
    escape.symlink_to("/etc")
    return {"absolute": "/etc", "traversal": f"{root}/../../../etc", "symlink": str(escape)}


@pytest.mark.parametrize("field", ["model", "adapter"])
def test_paths_outside_allowed_roots_are_refused(http, reliability_app, tmp_path_factory,
                                                 field):
    root = Path(reliability_app.args["serving"]["allowed_model_roots"][0])
    # The symlink lies inside the allowed root but points out of it.
    for name, path in _outside_paths(root, tmp_path_factory.mktemp(f"links-{field}")).items():
        spec = lora_spec(reliability_app, f"outside-{name}", ["x"])
        spec.update({"kind": "model", "model": path, "base": None, "adapter": None}
                    if field == "model" else {"adapter": path})
        resp = http.post("/v1/experts", json=spec, headers=reliability_app.auth)
        assert resp.status_code == 400, (name, resp.text)
        assert "outside the allowed roots" in resp.json()["error"]["message"]
    assert not [e for e in http.get("/v1/experts", headers=reliability_app.auth).json()["data"]
                if e["id"].startswith("outside-")]


def test_body_and_max_tokens_limits(http, reliability_app):
    serving = reliability_app.args["serving"]
    big = {"model": "conclave", "messages": [
        {"role": "user", "content": "x" * (serving["max_body_bytes"] + 1)}]}
    assert http.post("/v1/chat/completions", json=big).status_code == 413

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        yield b'{"model": "conclave", "messages": [{"role": "user", "content": "'
        for _ in range(serving["max_body_bytes"] // 1024 + 2):
            yield b"y" * 1024
        yield b'"}]}'
    resp = http.post("/v1/chat/completions", content=chunks(),
                     headers={"content-type": "application/json"})
    assert resp.status_code == 413

    over = {"model": "conclave", "max_tokens": serving["max_tokens_limit"] + 1,
            "messages": [{"role": "user", "content": "hi"}]}
    resp = http.post("/v1/chat/completions", json=over)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"


def test_no_secret_in_responses(http, reliability_app):
    auth = reliability_app.auth
    replies = [http.get("/v1/models"), http.get("/v1/experts", headers=auth),
               http.get("/healthz"), http.get("/metrics"), http.get("/openapi.json"),
               http.post("/v1/chat/completions", json={"model": "nope", "messages": []}),
               http.post("/v1/chat/completions", content=b"{not json"),
               http.post("/v1/experts", json={"id": "Bad Id"}, headers=auth),
               http.delete("/v1/experts/ghost", headers=auth)]
    for resp in replies:
        assert_no_secret(resp.text)
        assert_no_secret(str(resp.headers))


def test_no_secret_in_ray_logs(reliability_app, http):
    import ray

    http.get("/v1/experts", headers={"Authorization": "Bearer wrong"})  # a refused call
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files, f"no Ray logs under {logs}"
    leaked = [str(p) for p in files for secret in SECRETS
              if secret.encode() in p.read_bytes()]
    assert leaked == []
