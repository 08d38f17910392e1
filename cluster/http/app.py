"""The gateway's HTTP surface (FastAPI): thin routes over :class:`ConclaveService` and
:class:`ExpertAdmin`, OpenAI-style error bodies for every failure, a body-size limit and
a per-request timeout.

``build_http_app`` takes plain objects, so the whole surface runs under a test client
without Ray; the Serve gateway builds it per replica.

Its own ASGI middlewares, inside :class:`cluster.ops.tracing.RequestContext` (the request's
id and span). Shutdown (:class:`ShutdownGate`, :class:`ShutdownGuard`): count the HTTP requests in flight and, once closed, refuse new ones with 503
(``Retry-After``) while those in flight finish.

``conclave serve`` closes the gate on SIGTERM/SIGINT (through the gateway's ``drain``),
waits for the count to reach zero or the grace period to pass, and only then shuts Serve
down: the router and the pools stay up until the last admitted request has its answer.
``/metrics`` stays open, so a scrape during the drain still works.

Body limit (:class:`BodyLimit`): a declared ``Content-Length`` over the limit is refused
with 413 before anything is read; a chunked body is counted as it arrives and refused once
it passes the limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from cluster.http.admin import ExpertAdmin
from cluster.http.errors import (
    ApiError,
    ErrorResponse,
    from_validation,
    json_body,
    timeout_error,
)
from cluster.http.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelList,
    RouteRequest,
)
from cluster.http.responses import ResponsesApi, response_events
from cluster.http.responses_protocol import ResponsesRequest
from cluster.http.serving import (
    ConclaveService,
    conclave_headers,
)
from cluster.http.streaming import chat_events, completion_events, plan_headers
from cluster.ops.metrics import CONTENT_TYPE, ConclaveMetrics
from cluster.ops.tracing import RequestContext
from cluster.tenants.keys import StoredKey
from cluster.tenants.routes import add_key_routes
from cluster.tenants.tenancy import Tenancy

log = logging.getLogger(__name__)
_ERRORS = {code: {"model": ErrorResponse}
           for code in (400, 401, 403, 404, 413, 429, 502, 503, 504)}


async def _admitted(request: Request) -> StoredKey | None:
    """The caller's key, admitted by its limits (None: keys off). A dependency runs before
    the body is read: without a valid key, or over its limits, a caller gets 401/429
    whatever it sent, and nothing is routed or generated."""
    tenancy: Tenancy | None = request.app.state.tenancy
    return await tenancy.admit(request.headers.get("authorization")) if tenancy else None


async def _known(request: Request) -> StoredKey | None:
    """The caller's key, checked but not counted (None: keys off)."""
    tenancy: Tenancy | None = request.app.state.tenancy
    return await tenancy.authenticate(request.headers.get("authorization")) if tenancy else None


Admitted = Annotated[StoredKey | None, Depends(_admitted)]
Known = Annotated[StoredKey | None, Depends(_known)]
SessionHeader = Annotated[str | None, Header(alias="x-session-id")]


_OPEN_PATHS = frozenset({"/metrics"})


class ShutdownGate:
    """Open until :meth:`drain`; counts the requests it let in."""

    def __init__(self):
        self.closed = False
        self.in_flight = 0

    async def drain(self, grace_s: float, poll_s: float = 0.05) -> int:
        """Close the gate and wait up to ``grace_s`` for the requests in flight; returns
        how many were still running when it stopped waiting (0: all done)."""
        self.closed = True
        deadline = time.monotonic() + grace_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
        return self.in_flight


class ShutdownGuard:
    """ASGI middleware over a :class:`ShutdownGate`."""

    def __init__(self, app, gate: ShutdownGate):
        self.app = app
        self.gate = gate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.gate.closed:
            err = ApiError(503, "Conclave is shutting down; retry on another replica",
                           type="api_error", code="shutting_down",
                           headers={"Retry-After": "1", "Connection": "close"})
            await JSONResponse(err.body(), err.status, headers=err.headers)(scope, receive, send)
            return
        self.gate.in_flight += 1
        try:  # a streamed response counts until its last event is sent
            await self.app(scope, receive, send)
        finally:
            self.gate.in_flight -= 1


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException so FastAPI's body parsing passes it on."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body is larger than {max_bytes} bytes")


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        err = ApiError(413, f"request body is larger than {self.max_bytes} bytes",
                       code="body_too_large")
        payload = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


@dataclass
class GatewayParts:
    service: ConclaveService
    admin: ExpertAdmin
    metrics: ConclaveMetrics
    timeout_s: float
    max_body_bytes: int
    gate: ShutdownGate = field(default_factory=ShutdownGate)
    tenancy: Tenancy | None = None  # API keys (None: off, anyone may call)
    responses: ResponsesApi | None = None  # POST /v1/responses (None: nothing stored)


def build_http_app(parts: GatewayParts) -> FastAPI:
    """The FastAPI app serving the OpenAI, route, admin, health and metrics endpoints."""
    app = FastAPI(title="Conclave", version="0.1.0", responses=_ERRORS)
    app.add_middleware(BodyLimit, max_bytes=parts.max_body_bytes)
    app.add_middleware(ShutdownGuard, gate=parts.gate)
    app.add_middleware(RequestContext)  # outermost: refusals name their request too
    app.state.tenancy = parts.tenancy
    _add_error_handlers(app, parts.metrics)
    _add_openai_routes(app, parts)
    _add_admin_routes(app, parts.admin)
    add_key_routes(app, parts.tenancy, parts.admin)
    _add_ops_routes(app, parts)
    return app


def _add_openai_routes(app: FastAPI, parts: GatewayParts) -> None:
    service = parts.service

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, caller: Admitted,
                   x_session_id: SessionHeader = None):
        if body.stream:  # routed first: bad input is still a 4xx, not a broken stream
            plan = await _timed(parts, "chat", service.plan(
                body.query(), body.prompt(), body, caller, service.turn(body, x_session_id)))
            return _events(chat_events(service, body.model, plan, parts.timeout_s), [plan])
        return _reply(await _timed(parts, "chat", service.chat(body, caller, x_session_id)))

    responses = parts.responses or ResponsesApi(service, None)

    @app.post("/v1/responses")
    async def respond(body: ResponsesRequest, caller: Admitted,
                      x_session_id: SessionHeader = None):
        pending = await _timed(parts, "responses", responses.prepare(body, caller, x_session_id))
        if body.stream:
            return _events(response_events(responses, pending, parts.timeout_s), [pending.plan])
        return _reply(await _timed(parts, "responses", responses.answer(pending)))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, caller: Admitted):
        if body.stream:
            plans = await _timed(parts, "completions", service.plan_completions(body, caller))
            return _events(completion_events(service, body, plans, parts.timeout_s), plans)
        return _reply(await _timed(parts, "completions", service.completions(body, caller)))

    @app.post("/v1/route")
    async def route(body: RouteRequest, caller: Admitted, x_session_id: SessionHeader = None):
        return await _timed(parts, "route", service.route(body, caller, x_session_id))

    @app.get("/v1/models", response_model=ModelList)
    async def models(_caller: Known):
        return service.models()


def _add_admin_routes(app: FastAPI, admin: ExpertAdmin) -> None:
    @app.get("/v1/experts")
    async def list_experts(request: Request):
        admin.authorise(request.headers.get("authorization"))
        return admin.list()

    @app.post("/v1/experts")
    async def add_expert(request: Request):
        admin.authorise(request.headers.get("authorization"))
        body = await json_body(request)
        return await asyncio.to_thread(admin.add, body)

    @app.delete("/v1/experts/{expert_id}")
    async def remove_expert(expert_id: str, request: Request):
        admin.authorise(request.headers.get("authorization"))
        return await asyncio.to_thread(admin.remove, expert_id)


def _add_ops_routes(app: FastAPI, parts: GatewayParts) -> None:
    @app.get("/healthz")
    async def healthz():
        # unhealthy: experts whose last call failed on their replica (e.g. a model path
        # missing on that node), with the error; they are failed over meanwhile.
        return {"status": "ok", "experts": len(parts.service.models().data) - 1,
                "unhealthy": dict(parts.metrics.unhealthy)}

    @app.get("/metrics")
    async def metrics():
        return Response(parts.metrics.render(), media_type=CONTENT_TYPE)


def _reply(resp) -> Response:
    """The JSON response, with the ``x-conclave-*`` headers."""
    return JSONResponse(resp.model_dump(), headers=conclave_headers(resp.conclave))


def _events(events, plans) -> Response:
    """Server-sent events; the headers say what routing planned (the final event's
    ``conclave`` field says what happened, failovers included)."""
    return StreamingResponse(events, media_type="text/event-stream", headers=plan_headers(plans))


async def _timed(parts: GatewayParts, endpoint: str, work):
    """Run one request's work under the per-request timeout, counting it."""
    started = time.perf_counter()
    status = "200"
    try:
        return await asyncio.wait_for(work, parts.timeout_s)
    except TimeoutError:
        status = "504"
        raise timeout_error(parts.timeout_s) from None
    except ApiError as err:
        status = str(err.status)
        raise
    finally:
        parts.metrics.requests.labels(endpoint, status).inc()
        parts.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)


def _add_error_handlers(app: FastAPI, metrics: ConclaveMetrics) -> None:
    def respond(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def api_error(_request, err: ApiError):
        return respond(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, err: RequestValidationError):
        return respond(from_validation(list(err.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(_request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return respond(ApiError(err.status_code, str(err.detail),
                                code=code.get(err.status_code)))

    @app.exception_handler(Exception)
    async def unexpected(_request, err: Exception):
        # Log the type only: messages may carry connection strings.
        log.error("unhandled %s in gateway", type(err).__name__)
        return respond(ApiError(500, "internal error", type="api_error", code="internal"))
