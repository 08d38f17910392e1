"""Gateway deployment (the ingress): wires the router and pool handles, the live expert
catalog, the aggregator and the metrics into :func:`cluster.http.app.build_http_app`.

Calls out are coalesced: concurrent routing calls go to the router as one ``route_many``,
concurrent generations for one pool and engine key as one ``generate_many``, formed while
the previous batch to that target runs (:class:`~cluster.serve.drain_batcher.DrainBatcher`). A
Ray call costs both ends a few milliseconds of CPU whatever it carries, so one hop per
batch instead of one per row is most of what batching saves on a CPU-bound host. With a
batch size of 1 (the benchmark's baseline) every call goes alone.

A plain class: Serve wraps it with ``serve.ingress()`` in :mod:`cluster.serve.app`, and calls
``__serve_build_asgi_app__`` once the replica is constructed.
"""

from __future__ import annotations

import logging
import time

from ray.exceptions import RayActorError

from cluster.catalog import ExpertCatalog
from cluster.config import parse_config
from cluster.http.admin import ExpertAdmin, admin_token, allowed_roots
from cluster.http.app import GatewayParts, ShutdownGate, build_http_app
from cluster.http.errors import ApiError
from cluster.http.response_store import ResponseStore
from cluster.http.responses import ResponsesApi
from cluster.http.serving import ConclaveService, SessionRouting
from cluster.ops.metrics import ConclaveMetrics
from cluster.ops.tracing import TraceContext, install_logging, setup_tracing, span
from cluster.serve.drain_batcher import DrainBatcher
from cluster.serve.messages import ExpertReply, ExpertRequest, Prompt, RouteQuery, RouteResult
from cluster.serve.pool_config import pool_deployment
from cluster.tenants.tenancy import tenancy_for
from experts.engine import GenerationParams
from experts.errors import ExpertError
from experts.loader import engine_key
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from routing.options import RouteOptions
from routing.sessions import SessionStore

log = logging.getLogger(__name__)
ROUTER = None  # the router's batcher key (a pool's is its name)


class Gateway:
    """OpenAI-compatible front door of one Conclave application."""

    def __init__(self, config: dict, router, pools: dict, token: str | None = None):
        self.config = parse_config(config, paths_on_load=True)
        install_logging()
        setup_tracing(self.config.tracing, "gateway")
        registry = ExpertRegistry(connect(self.config.redis.url),
                                  namespace=self.config.redis.namespace)
        self.catalog = ExpertCatalog(registry).start()
        self.metrics = ConclaveMetrics()
        self._router = router
        self._pools = pools
        self._handles: dict[tuple[str, str], object] = {}
        routing = self.config.routing
        self._batchers = {ROUTER: DrainBatcher(self._send, routing.batch_size,
                                               concurrency=routing.num_replicas)}
        self._batchers.update({pool.name: DrainBatcher(self._send, pool.max_batch_size,
                                                       concurrency=calls_in_flight(pool))
                               for pool in self.config.pools})
        self.tenancy = tenancy_for(self.config, self.catalog, self.metrics)
        sessions = SessionStore(connect(self.config.redis.url, socket_timeout=1.0),
                                self.config.redis.namespace, routing.sessions,
                                lambda outcome: self.metrics.sessions.labels(outcome).inc())
        self.service = ConclaveService(self.config, self._route, self._call_expert,
                                       self.catalog, self.metrics, self.tenancy,
                                       SessionRouting(sessions))
        self.admin = ExpertAdmin(self.catalog, token or admin_token(self.config.serving),
                                 allowed_roots(self.config.serving),
                                 {pool.name: pool.engine_choice() for pool in self.config.pools})
        self.gate = ShutdownGate()

    def __serve_build_asgi_app__(self):
        serving = self.config.serving
        store = ResponseStore(connect(self.config.redis.url, socket_timeout=1.0),
                              self.config.redis.namespace, serving.responses)
        return build_http_app(GatewayParts(self.service, self.admin, self.metrics,
                                           serving.request_timeout_s, serving.max_body_bytes,
                                           self.gate, self.tenancy,
                                           ResponsesApi(self.service, store)))

    async def drain(self, grace_s: float) -> int:
        """Refuse new requests (503) and wait up to ``grace_s`` for those in flight; the
        number still running when the wait ended (``conclave serve`` on SIGTERM)."""
        return await self.gate.drain(grace_s)

    async def _route(self, query: str, options: RouteOptions) -> RouteResult:
        """The router's decision; its :class:`RoutingError` raised here for a bad query."""
        with span("route", **{"conclave.strategy": options.strategy,
                              "conclave.k": str(options.k)}) as current:
            try:
                result = await self._batchers[ROUTER].submit(
                    (ROUTER, ""), RouteQuery(query, options, TraceContext.current()))
            except RayActorError:  # died twice: no live router replica right now
                raise ApiError(503, "the router is restarting; retry shortly",
                               type="api_error", code="router_unavailable",
                               headers={"Retry-After": "2"}) from None
            result = result.raise_error()
            current.set_attribute("conclave.experts", result.decision.experts)
            current.set_attribute("conclave.cache", result.cache)
        return result

    async def _call_expert(self, expert_id: str, prompt: Prompt, params: GenerationParams,
                           sink=None) -> ExpertReply:
        """One generation; with ``sink``, its text goes to ``sink`` as it is generated.
        Raises the reply's error: a 400 when the request was at fault, else the
        :class:`ExpertError` the panel fails over on."""
        spec = self.catalog.get(expert_id)
        with span("expert", **{"conclave.expert": expert_id, "conclave.pool": spec.pool,
                               "conclave.engine": engine_key(spec),
                               "conclave.streamed": sink is not None}) as current:
            request = ExpertRequest(expert_id, prompt, params, TraceContext.current())
            started, first = time.perf_counter(), None
            if sink is None:
                reply = await self._batchers[spec.pool].submit((spec.pool, engine_key(spec)),
                                                               request)
            else:
                reply, first = await self._stream(spec, request, sink)
            self.metrics.record_generation(spec.pool, expert_id, reply)
            if reply.request_fault:  # e.g. too long: another expert would fail it too
                raise ApiError(400, str(reply.error), code="invalid_request")
            reply.raise_error()
            ttft = (time.perf_counter() if first is None else first) - started
            self.metrics.record_timing(expert_id, time.perf_counter() - started,
                                       reply.completion_tokens, None if first is None else ttft)
            current.set_attributes({"conclave.completion_tokens": reply.completion_tokens,
                                    "conclave.time_to_first_token_s": ttft})
        return reply

    async def _stream(self, spec, request: ExpertRequest,
                      sink) -> tuple[ExpertReply, float | None]:
        """The reply of a streamed generation, its deltas handed to ``sink`` on the way,
        and when the first delta came (perf_counter; None: none came)."""
        handle = self._handle(spec.pool, engine_key(spec)).options(stream=True)
        reply = ExpertReply.failed(spec.id, ExpertError("the stream ended without a reply"))
        first = None
        async for item in handle.generate_stream.remote(request):
            if isinstance(item, ExpertReply):
                reply = item
            else:
                first = first or time.perf_counter()
                sink(item)
        return reply, first

    def _handle(self, pool: str, key: str):
        """The pool handle pinned to one engine key (cached: handles are not free)."""
        handle = self._handles.get((pool, key))
        if handle is None:
            handle = self._pools[pool].options(multiplexed_model_id=key)
            self._handles[(pool, key)] = handle
        return handle

    async def _send(self, target: tuple[str | None, str], items: list) -> list:
        """One coalesced call: to the router (``(ROUTER, "")``), or to a pool's replica for
        one engine key. Made once more when the replica died under it: that is no fault of
        the request or the expert, and Serve sends the retry to a live replica (or waits
        for the replacement). A second failure goes to the caller (the panel fails over).
        Retries are counted in ``conclave_replica_retries``."""
        pool, key = target
        method = (self._router.route_many if pool is ROUTER
                  else self._handle(pool, key).generate_many)
        try:
            return await method.remote(items)
        except RayActorError as err:
            deployment = "router" if pool is ROUTER else pool_deployment(pool)
            log.warning("%s replica died during a call (%s); retrying once", deployment,
                        type(err).__name__)
            self.metrics.replica_retries.labels(deployment).inc()
            return await method.remote(items)


def calls_in_flight(pool) -> int:
    """How many ``generate_many`` calls per engine key the gateway keeps in flight to a
    pool. A batch engine (hf) runs one batch at a time per replica, so rows queue here and
    form the next batch meanwhile; a vLLM engine batches by itself, so calls go out as they
    come (rows arriving together still share one call)."""
    if pool.resolved_engine() == "vllm":
        return pool.max_ongoing_requests * pool.most_replicas
    return pool.most_replicas
