"""The gateway's calls out, with fake deployment handles (no Ray cluster): concurrent calls
coalesce into one batch call per target, one row's failure stays its own, and a replica
dying under a call is retried once, then reported (503 for the router)."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import RayActorError

from cluster.config import TracingConfig
from cluster.http.errors import ApiError
from cluster.ops.tracing import bound_request_id, memory_spans, setup_tracing
from cluster.serve.gateway import Gateway
from cluster.serve.messages import ExpertReply, ExpertRequest, RouteQuery, RouteResult
from experts.engine import GenerationParams
from experts.errors import ExpertError
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec
from routing.errors import RoutingError
from routing.options import RouteOptions
from routing.selection import Decision


class FakeMethod:
    """``handle.method.remote(*args)``: an awaitable, like a DeploymentResponse."""

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class FakeDeployment:
    """Records every batch call as (engine key, items); the first ``deaths`` calls die as
    on a killed replica."""

    def __init__(self, deaths: int = 0):
        self.batches: list[tuple[str | None, list]] = []
        self.deaths = deaths
        self.route_many = FakeMethod(lambda items: self._run(None, items, route_replies))

    def options(self, multiplexed_model_id=None, **_):
        pinned = FakeDeployment()
        pinned.generate_many = FakeMethod(
            lambda rows: self._run(multiplexed_model_id, rows, generation_replies))
        return pinned

    async def _run(self, key, items: list, replies):
        await asyncio.sleep(0.01)  # concurrent callers queue meanwhile
        if self.deaths:
            self.deaths -= 1
            raise RayActorError()
        self.batches.append((key, list(items)))
        return replies(items)


def route_replies(queries: list[RouteQuery]) -> list[RouteResult]:
    return [RouteResult.failed(RoutingError("cannot route that")) if q.query == "bad" else
            RouteResult(Decision(query=q.query, experts=["alpha"], weights=[1.0], strategy="knn",
                                 ranked=[("alpha", 1.0)], explanation={}), "miss",
                        routing_ms=1.0, batch_size=len(queries)) for q in queries]


def generation_replies(requests: list[ExpertRequest]) -> list[ExpertReply]:
    return [ExpertReply.failed(r.expert, ValueError("bad row")) if r.prompt == "bad" else
            ExpertReply(text=f"{r.expert}: {r.prompt}", prompt_tokens=1, completion_tokens=2)
            for r in requests]


def make_gateway(redis_url: str, router: FakeDeployment, pool: FakeDeployment) -> Gateway:
    registry = ExpertRegistry(connect(redis_url))
    registry.add(ExpertSpec(id="base", model="org/base"))
    registry.add(ExpertSpec(id="alpha", kind="lora", base="base", adapter="org/alpha"))
    config = {"redis": {"url": redis_url}, "routing": {"batch_size": 8},
              "pools": [{"name": "default", "max_batch_size": 8, "num_replicas": 1}]}
    return Gateway(config, router, {"default": pool}, token="t")


@pytest.fixture()
def gateway_for(redis_url):
    made = []

    def build(router_deaths: int = 0, pool_deaths: int = 0):
        router, pool = FakeDeployment(router_deaths), FakeDeployment(pool_deaths)
        made.append(make_gateway(redis_url, router, pool))
        return made[-1], router, pool

    yield build
    for gateway in made:
        gateway.catalog.stop()


def test_concurrent_generations_for_one_base_go_out_as_one_call(gateway_for):
    gateway, _, pool = gateway_for()

    async def scenario():
        first = asyncio.create_task(gateway._call_expert("alpha", "p0", GenerationParams()))
        await asyncio.sleep(0)  # the first call goes out alone...
        rest = [gateway._call_expert(e, f"p{i}", GenerationParams()) for i, e in
                enumerate(["alpha", "base", "alpha", "base"], start=1)]
        return await asyncio.gather(first, *rest)  # ...the rest queue behind it

    replies = asyncio.run(scenario())
    assert [r.text for r in replies] == ["alpha: p0", "alpha: p1", "base: p2", "alpha: p3",
                                            "base: p4"]
    assert [len(rows) for _, rows in pool.batches] == [1, 4]  # one hop for four rows
    assert {key for key, _ in pool.batches} == {"base"}  # LoRA rows go to their base's replicas


def test_a_failed_row_raises_for_its_caller_only(gateway_for):
    gateway, _, _ = gateway_for()

    async def scenario():
        calls = [gateway._call_expert("alpha", p, GenerationParams()) for p in ("ok", "bad", "fine")]
        return await asyncio.gather(*calls, return_exceptions=True)

    ok, bad, fine = asyncio.run(scenario())
    assert ok.text == "alpha: ok" and fine.text == "alpha: fine"
    assert isinstance(bad, ExpertError) and str(bad) == "expert 'alpha': ValueError: bad row"


def test_concurrent_queries_are_routed_in_one_call(gateway_for):
    gateway, router, _ = gateway_for()

    async def scenario():
        return await asyncio.gather(*(gateway._route(f"q{i}", RouteOptions(k=1)) for i in range(5)))

    replies = asyncio.run(scenario())
    assert [r.decision.query for r in replies] == [f"q{i}" for i in range(5)]
    assert sum(len(items) for _, items in router.batches) == 5 and len(router.batches) <= 2


def test_a_query_the_router_refuses_raises_its_routing_error_for_that_caller(gateway_for):
    gateway, _, _ = gateway_for()

    async def scenario():
        calls = [gateway._route(q, RouteOptions()) for q in ("ok", "bad")]
        return await asyncio.gather(*calls, return_exceptions=True)

    ok, bad = asyncio.run(scenario())
    assert ok.decision.query == "ok"
    assert isinstance(bad, RoutingError) and str(bad) == "cannot route that"


def test_a_replica_dying_under_a_call_is_retried_once_and_counted(gateway_for):
    gateway, router, pool = gateway_for(router_deaths=1, pool_deaths=1)
    assert asyncio.run(gateway._route("q", RouteOptions())).cache == "miss"
    assert asyncio.run(gateway._call_expert("alpha", "p", GenerationParams())).text == "alpha: p"
    retried = {s.labels["deployment"]: s.value for s in _samples(gateway, "conclave_replica_retries")}
    assert retried == {"router": 1.0, "pool-default": 1.0}


def test_a_router_dying_twice_is_a_503_and_a_pool_dying_twice_an_expert_error(gateway_for):
    gateway, _, _ = gateway_for(router_deaths=2, pool_deaths=2)
    with pytest.raises(ApiError) as err:
        asyncio.run(gateway._route("q", RouteOptions()))
    assert err.value.status == 503 and err.value.headers["Retry-After"]
    with pytest.raises(RayActorError):  # the panel fails this expert over
        asyncio.run(gateway._call_expert("alpha", "p", GenerationParams()))


def _samples(gateway: Gateway, family: str):
    for metric in gateway.metrics.registry.collect():
        if metric.name == family:
            return [s for s in metric.samples if s.name.endswith("_total")]
    return []


def test_each_call_out_carries_its_request_trace_context(gateway_for):
    gateway, router, pool = gateway_for()
    setup_tracing(TracingConfig(enabled=True, exporter="memory"), "test")

    async def one(request_id: str):
        with bound_request_id(request_id):
            await gateway._route("q", RouteOptions(k=1))
            await gateway._call_expert("alpha", "p", GenerationParams())

    async def scenario():
        await asyncio.gather(one("r1"), one("r2"))

    try:
        asyncio.run(scenario())
        spans = {s.context.span_id: s for s in memory_spans()}
    finally:
        setup_tracing(TracingConfig(), "test")
    sent = [query.trace for _, queries in router.batches for query in queries]
    sent += [request.trace for _, requests in pool.batches for request in requests]
    assert sorted(c.request_id for c in sent) == ["r1", "r1", "r2", "r2"]
    for context in sent:  # the parent the replica continues from: the call's own span
        parent = spans[int(context.traceparent.split("-")[2], 16)]
        assert parent.name in {"route", "expert"}
        assert parent.attributes["conclave.request_id"] == context.request_id
