"""Fixtures for the reliability tests.

``reliability_app``: the test app of tests/serving_fixtures.py (tiny LM, three LoRA experts,
minus the broken one) deployed once more under ``/reliability``, this time with
- its own password-protected Redis that tests stop and start again,
- two expert-pool replicas and two router replicas (one can be killed while the other
  serves),
- small gateway limits (8 ongoing, 8 queued) and a short request timeout (15 s), so
  overload and timeouts are reached in seconds.
The load generator keeps its concurrency at the ongoing limit, so it is never refused.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass

import pytest
from serving_fixtures import app_args, broken_model

REDIS_PASSWORD = "rel-redis-s3cret-pw"
ADMIN_TOKEN = "rel-admin-t0ken-9f3a"
APP = "reliability"
PREFIX = "/reliability"
POOL = "pool-default"
POOL_REPLICAS = 2
ROUTER_REPLICAS = 2
MAX_ONGOING = 8
MAX_QUEUED = 8
REQUEST_TIMEOUT_S = 15


@dataclass
class ReliableApp:
    url: str  # http://127.0.0.1:PORT/reliability
    args: dict
    redis: object  # faults.RestartableRedis (tests/faults.py)
    name: str = APP
    token: str = ADMIN_TOKEN

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def questions(self) -> list[str]:
        """Every example question of the configured experts (a mixed-domain set)."""
        return [q for spec in self.args["experts"] for q in spec.get("examples", [])]

    def run_with_faults(self, faults: list, extra_questions: list[str] = (),
                        requests: int = 200):
        """``requests`` mixed requests (``general`` also asked directly) at the ongoing
        limit, short answers, ``faults`` fired on their schedule; prints the figures."""
        import asyncio

        from loadgen import MixedLoad

        load = MixedLoad(self.url, self.questions() + list(extra_questions),
                         direct=["general"], concurrency=MAX_ONGOING, max_tokens=4)
        report = asyncio.run(load.run(requests=requests, faults=faults))
        print(report.table())
        return report


def reliability_args(redis_url: str, base: dict) -> dict:
    """The shared test app's args with this suite's Redis, replicas and limits."""
    args = copy.deepcopy(base)
    args["redis"] = {"url": redis_url, "namespace": "rel"}
    args["experts"] = [e for e in args["experts"] if e["id"] != "broken"]
    args["pools"] = [{"name": "default", "num_cpus": 0, "num_replicas": POOL_REPLICAS,
                      "max_batch_size": 8, "max_resident_models": 3}]
    args["routing"]["num_replicas"] = ROUTER_REPLICAS
    args["serving"].update(admin_token=ADMIN_TOKEN, max_ongoing_requests=MAX_ONGOING,
                           max_queued_requests=MAX_QUEUED,
                           request_timeout_s=REQUEST_TIMEOUT_S, expert_timeout_s=30)
    return args


def deploy(app: ReliableApp) -> None:
    """(Re)deploy the app from its args; returns once every replica is up."""
    from ray import serve

    from cluster.serve.app import build_app

    serve.run(build_app(app.args), name=app.name, route_prefix=PREFIX)
    warm_up(app)


def warm_up(app: ReliableApp) -> None:
    """Mixed requests at full concurrency, so both pool replicas hold the base model (every
    LoRA expert rides on its engine) before a test measures anything."""
    app.run_with_faults([], requests=32)


@pytest.fixture()
def restartable_redis():
    """A password-protected Redis on its own socket, stopped at the end of the test."""
    from faults import RestartableRedis

    # A short folder: unix socket paths are limited to ~107 bytes.
    server = RestartableRedis(tempfile.mkdtemp(prefix="crel-"), password=REDIS_PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def reliability_app(serve_instance, tiny_lm, tiny_adapters, tmp_path_factory):
    """The app described above, deployed once for the session."""
    from faults import RestartableRedis
    from ray import serve

    redis = RestartableRedis(tempfile.mkdtemp(prefix="crel-"), password=REDIS_PASSWORD).start()
    base = tmp_path_factory.getbasetemp()
    broken = broken_model(tmp_path_factory.mktemp("rel-broken"))
    args = reliability_args(redis.url, app_args(redis.url, tiny_lm, tiny_adapters, broken,
                                                [str(base)]))
    app = ReliableApp(serve_instance + PREFIX, args, redis)
    deploy(app)
    yield app
    serve.delete(APP)
    redis.stop()
