"""Session fixtures for the Ray tests: one local Ray + Serve instance, and one Conclave
app on it (tiny LM experts, LoRA experts on it, one expert whose weights are broken),
shared by tests/integration and tests/e2e. Imported by tests/conftest.py.

Deployments reserve no CPU (``num_cpus: 0``) so they schedule on a 2-core machine.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

ADMIN_TOKEN = "test-admin-token"
APP = "conclave"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ConclaveServer:
    url: str  # http://127.0.0.1:PORT
    token: str
    redis_url: str
    namespace: str
    args: dict

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def serve_instance():
    """Local Ray (2 CPUs) + Serve on a free port; yields the HTTP base URL."""
    ray = pytest.importorskip("ray")
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, namespace="conclave-tests",
             log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def broken_model(root: Path) -> Path:
    """A folder that exists (so the spec validates) but holds no loadable model."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text("{ this is not a model config")
    return root


def app_args(redis_url: str, tiny_lm: Path, adapters: dict[str, Path], broken: Path,
             roots: list[str]) -> dict:
    """The test app: a base model, three LoRA experts on it, one broken expert."""
    def lora(name, adapter, examples):
        return {"id": name, "kind": "lora", "base": "general", "adapter": str(adapter),
                "domain": name, "description": f"{name} questions", "examples": examples}

    return {
        "redis": {"url": redis_url, "namespace": "itest"},
        "experts": [
            {"id": "general", "model": str(tiny_lm), "domain": "general",
             "description": "general knowledge",
             "examples": ["what is the capital city of france", "what is the capital city of peru",
                          "tell me about the roman empire", "tell me about the ottoman empire"],
             "generation": {"max_tokens": 8}},
            lora("math", adapters["alpha"],
                 ["what is the derivative of x squared", "what is the derivative of sin x",
                  "solve the equation 2x + 3 = 7", "solve the equation x squared = 9"]),
            lora("code", adapters["beta"],
                 ["write a python function that adds two numbers",
                  "write a python function that reverses a list",
                  "fix this javascript bug", "fix this javascript loop"]),
            lora("medicine", adapters["gamma"],
                 ["the patient presents with fever and cough", "the patient presents with a rash",
                  "what dose of ibuprofen is safe", "what dose of aspirin is safe"]),
            {"id": "broken", "model": str(broken), "description": "weights are corrupt",
             "examples": ["zebra quantum pancake riddle", "zebra quantum waffle riddle"]},
        ],
        "routing": {"strategy": "knn", "k": 2},
        "pools": [{"name": "default", "num_cpus": 0, "max_batch_size": 8,
                   "max_resident_models": 3}],
        "serving": {"admin_token": ADMIN_TOKEN, "allowed_model_roots": roots,
                    "max_body_bytes": 65536, "max_tokens_limit": 64,
                    "request_timeout_s": 120, "expert_timeout_s": 60},
    }


@pytest.fixture(scope="session")
def serving_redis(tmp_path_factory) -> str:
    """The app's own embedded Redis server: unit tests flush theirs between tests, and
    must not wipe the registry of the app shared by the whole session."""
    from experts.redis_conn import start_embedded

    server = start_embedded(tmp_path_factory.mktemp("serving-redis") / "serving.rdb")
    return f"unix://{server.socket_file}"


@pytest.fixture(scope="session")
def conclave_server(serve_instance, serving_redis, tiny_lm, tiny_adapters,
                    tmp_path_factory) -> ConclaveServer:
    """The Conclave app deployed once for the session."""
    from ray import serve

    from cluster.deploy.local import wait_for_expert
    from cluster.serve.app import build_app

    base = tmp_path_factory.getbasetemp()
    broken = broken_model(tmp_path_factory.mktemp("broken-model"))
    args = app_args(serving_redis, tiny_lm, tiny_adapters, broken, [str(base)])
    # every replica appends its spans here (tests/integration/test_tracing.py reads them)
    args["tracing"] = {"enabled": True, "exporter": "file", "file": str(base / "spans.jsonl")}
    serve.run(build_app(args), name=APP, route_prefix="/")
    wait_for_expert(serve_instance, "general")  # its vLLM engine has started
    yield ConclaveServer(serve_instance, ADMIN_TOKEN, serving_redis, "itest", args)
    serve.delete(APP)

