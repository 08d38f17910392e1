"""The gateway's HTTP app without Ray: the real FastAPI app and service, a real registry
in the embedded Redis, and plain async functions standing in for the router and pools."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading

from fastapi.testclient import TestClient

from cluster.catalog import ExpertCatalog
from cluster.config import parse_config
from cluster.http.admin import ExpertAdmin
from cluster.http.app import GatewayParts, ShutdownGate, build_http_app
from cluster.http.response_store import ResponseStore
from cluster.http.responses import ResponsesApi
from cluster.http.serving import ConclaveService, SessionRouting
from cluster.http.streaming import pieces
from cluster.ops.metrics import ConclaveMetrics
from cluster.serve.messages import BatchStats, ExpertReply, RouteResult
from cluster.tenants.tenancy import tenancy_for
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec
from routing.options import RouteOptions
from routing.selection import Decision
from routing.sessions import SessionStore

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeBackends:
    """Router and experts: a fixed ranking, scripted failures, a hang on demand. A call
    with a ``sink`` streams its answer word by word; after the first word it waits while
    ``held`` is set, and an expert in ``fail_midway`` raises once it has sent that word."""

    def __init__(self):
        self.failing: set[str] = set()
        self.fail_midway: set[str] = set()
        self.hang = False
        self.fail_prompts_with: str | None = None
        self.calls: list[str] = []
        self.streamed: list[str] = []  # experts called with a sink
        self.held = threading.Event()
        self.tool_calls: list[dict] | None = None  # what an expert's tool parser found
        self.routed: list[str] = []  # the texts routed
        self.rankings: dict[str, list[tuple[str, float]]] = {}  # word of the newest line →

    async def route(self, query: str, options: RouteOptions) -> RouteResult:
        self.routed.append(query)
        newest = query.splitlines()[-1] if query else ""
        ranked = next((r for word, r in self.rankings.items() if word in newest),
                      [("alpha", 0.9), ("beta", 0.8), ("gamma", 0.5)])
        k = options.k
        decision = Decision(query=query, experts=[n for n, _ in ranked[:k]],
                            weights=[1.0 / k] * k, strategy=options.strategy or "knn",
                            ranked=ranked, explanation={"why": "test"})
        return RouteResult(decision, "miss", routing_ms=1.0, batch_size=1)

    async def call(self, expert: str, prompt, params: dict, sink=None) -> ExpertReply:
        self.calls.append(expert)
        if self.fail_prompts_with and self.fail_prompts_with in json.dumps(prompt):
            raise RuntimeError("synthesis exploded")
        if self.hang:
            await asyncio.Event().wait()
        if expert in self.failing:
            raise RuntimeError(f"{expert} exploded")
        text = f"answer from {expert}"
        if sink is not None:
            await self._stream(expert, text, sink)
        return ExpertReply(text=text, prompt_tokens=3, completion_tokens=4,
                           stats=BatchStats(batch_size=2, seconds=0.1, loads=(0.5,)),
                           tool_calls=self.tool_calls)

    async def _stream(self, expert: str, text: str, sink) -> None:
        self.streamed.append(expert)
        first, *rest = pieces(text)
        sink(first)
        while self.held.is_set():
            await asyncio.sleep(0.005)
        if expert in self.fail_midway:
            raise RuntimeError(f"{expert} died mid-answer")
        for piece in rest:
            sink(piece)


@contextlib.contextmanager
def gateway_client(redis_url: str, gate: ShutdownGate | None = None,
                   tenants: dict | None = None, costs: dict[str, float] | None = None,
                   session_redis: str | None = None):
    """``(TestClient, FakeBackends, ExpertCatalog)`` over alpha, beta and gamma; k=2,
    a 0.5 s request timeout, a 4 KiB body limit, max_tokens up to 100. ``tenants``: the
    config's ``tenants`` section (API keys); ``costs``: expert prices; ``session_redis``:
    where sessions and stored responses live (default: ``redis_url``)."""
    config = parse_config({
        "redis": {"url": redis_url},
        "routing": {"k": 2},
        "serving": {"max_body_bytes": 4096, "max_tokens_limit": 100,
                    "request_timeout_s": 0.5, "expert_timeout_s": 5},
        "tenants": tenants or {},
    })
    registry = ExpertRegistry(connect(redis_url))
    for name in ("alpha", "beta", "gamma"):
        registry.add(ExpertSpec(id=name, model="org/" + name, description=f"{name} expert",
                                cost=(costs or {}).get(name, 0.0)))
    catalog = ExpertCatalog(registry).start()
    backends = FakeBackends()
    metrics = ConclaveMetrics()
    tenancy = tenancy_for(config, catalog, metrics)
    sessions = SessionStore(connect(session_redis or redis_url), "conclave", config.routing.sessions,
                            lambda outcome: metrics.sessions.labels(outcome).inc())
    service = ConclaveService(config, backends.route, backends.call, catalog, metrics, tenancy,
                              SessionRouting(sessions))
    admin = ExpertAdmin(catalog, TOKEN, ["/nonexistent-root"])
    responses = ResponsesApi(service, ResponseStore(connect(session_redis or redis_url), "conclave",
                                                    config.serving.responses))
    app = build_http_app(GatewayParts(service, admin, metrics, 0.5, 4096,
                                      gate or ShutdownGate(), tenancy, responses))
    try:
        with TestClient(app) as client:
            yield client, backends, catalog
    finally:
        catalog.stop()
