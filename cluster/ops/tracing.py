"""A request's identity across processes: its id in every log line, its OpenTelemetry trace.

Request ids: one per HTTP request, taken from ``x-request-id`` when the client (or a proxy
in front) sends a sane one, else generated; in a context variable while the request runs,
so every log line written meanwhile carries it (:class:`RequestIdFilter`), and returned in
the response's ``x-request-id`` header and ``conclave`` field. Ray Serve's proxy already
echoes the incoming ``x-request-id`` (or one it generated), so the gateway adds the header
only when its id differs from the one it received: none came (outside Serve), or it was not
acceptable (longer than 128 characters, or not printable ASCII without spaces).

Tracing: one trace per request, across every Ray hop.

Each process (the gateway, router and pool replicas) sets up its own tracer from the
config's ``tracing`` section (:func:`setup_tracing`); off, every span is the API's no-op.
The trace context crosses a Ray hop inside Conclave's own messages, as a
:class:`TraceContext` (the W3C ``traceparent`` string and the request id) on each routed
query and each generation row, not through Ray's tracing hooks; the replica continues the
trace from it. An incoming ``traceparent`` header starts the gateway's span under the
caller's trace.

Batched work (one encoder pass, one generate for many rows) is recorded once per request:
a span per row under that row's own context, with the batch's times and size.

Exporters: ``otlp`` (OTLP over HTTP to ``endpoint``; needs ``opentelemetry-exporter-otlp``),
``file`` (each finished span as one JSON line appended to ``file``: every replica writes
its own lines; tests and debugging), ``memory`` (kept in the process: the cost of tracing
without a collector, for benchmarks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from cluster.config import TracingConfig

_PROPAGATOR = TraceContextTextMapPropagator()
_NOOP = trace.NoOpTracer()
_state: dict = {"tracer": _NOOP, "provider": None, "memory": None}
_UNTRACED_PATHS = frozenset({"/metrics", "/healthz"})  # scrapes and probes: no traces
REQUEST_ID_HEADER = "x-request-id"
_ACCEPTABLE_ID = re.compile(r"[\x21-\x7e]{1,128}")
_REQUEST_ID: ContextVar[str | None] = ContextVar("conclave_request_id", default=None)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [request %(request_id)s] %(message)s"


def setup_tracing(config: TracingConfig, component: str) -> None:
    """This process's tracer for ``config`` (replaces any earlier one; off: no-op)."""
    provider = _state["provider"]
    if provider is not None:
        provider.shutdown()
    _state.update(tracer=_NOOP, provider=None, memory=None)
    if not config.enabled:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": config.service_name,
                                "conclave.component": component})
    provider = TracerProvider(resource=resource,
                              sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)))
    provider.add_span_processor(_processor(config))
    _state.update(tracer=provider.get_tracer("conclave"), provider=provider)


def accept_request_id(value: str | None) -> str:
    """``value`` when it is an acceptable id, else a new one."""
    if value is not None and _ACCEPTABLE_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being handled in this context (None outside one)."""
    return _REQUEST_ID.get()


@contextlib.contextmanager
def bound_request_id(request_id: str | None):
    """Run the block as part of request ``request_id``."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        _REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` ("-" outside a request) on every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get() or "-"
        return True


def install_logging(level: int = logging.INFO) -> logging.Handler:
    """A stderr handler on the root logger whose lines name the request (once per
    process): Ray replicas write stderr to their worker log files."""
    root = logging.getLogger()
    for handler in root.handlers:
        if any(isinstance(f, RequestIdFilter) for f in handler.filters):
            return handler
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    root.addHandler(handler)
    for name in ("cluster", "routing", "experts"):
        logging.getLogger(name).setLevel(level)
    return handler


def _processor(config: TracingConfig):
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    if config.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint))
    if config.exporter == "file":
        out = open(config.file, "a", encoding="utf-8")  # noqa: SIM115 - lives with the provider
        return SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=_json_line))
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    _state["memory"] = InMemorySpanExporter()
    return SimpleSpanProcessor(_state["memory"])


def _json_line(span) -> str:
    return json.dumps(json.loads(span.to_json()), separators=(",", ":")) + "\n"


def memory_spans() -> list:
    """Spans the ``memory`` exporter holds in this process (none for the others)."""
    memory = _state["memory"]
    return list(memory.get_finished_spans()) if memory is not None else []


def tracer() -> trace.Tracer:
    return _state["tracer"]


def enabled() -> bool:
    """Whether this process records spans. Off, nothing is recorded whatever the context
    says, so the request path skips spans and context entirely (no contextvar churn)."""
    return _state["tracer"] is not _NOOP


@dataclass(frozen=True)
class TraceContext:
    """What a message carries across a Ray hop: the W3C ``traceparent`` of the span that
    sent it (None: not traced or not sampled) and the request id."""

    traceparent: str | None = None
    request_id: str | None = None

    @classmethod
    def current(cls) -> TraceContext:
        if not enabled():
            return cls(None, current_request_id())
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return cls(carrier.get("traceparent"), current_request_id())

    def parent(self) -> otel_context.Context | None:
        """The OpenTelemetry context to start child spans in (None: a new trace)."""
        if self.traceparent is None:
            return None
        return _PROPAGATOR.extract({"traceparent": self.traceparent})


def incoming_parent(traceparent: str | None) -> otel_context.Context | None:
    """The caller's trace from an HTTP ``traceparent`` header (None: start a new one)."""
    return TraceContext(traceparent).parent()


def span(name: str, parent: otel_context.Context | None = None, **attributes):
    """A span around the block (a child of the current span, or of ``parent``), named
    with the current request id; yields it to add attributes (tracing off: a no-op span)."""
    if not enabled():
        return _NO_SPAN
    return _span(name, parent, attributes)


_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)  # stateless: one serves every block


@contextlib.contextmanager
def _span(name: str, parent: otel_context.Context | None, attributes: dict):
    attrs = {k: v for k, v in attributes.items() if v is not None}
    if current_request_id():
        attrs["conclave.request_id"] = current_request_id()
    with tracer().start_as_current_span(name, context=parent, attributes=attrs) as current:
        yield current


def record_span(name: str, context: TraceContext | None, start_ns: int, end_ns: int,
                **attributes) -> TraceContext | None:
    """A finished span for work already done (one row of a batch), under ``context``;
    the context of the new span, for its own children (None: nothing to trace under)."""
    if context is None or context.traceparent is None:
        return None
    attrs = {k: v for k, v in attributes.items() if v is not None}
    if context.request_id:
        attrs["conclave.request_id"] = context.request_id
    done = tracer().start_span(name, context=context.parent(), attributes=attrs,
                               start_time=start_ns)
    done.end(end_time=end_ns)
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(done))
    return TraceContext(carrier.get("traceparent"), context.request_id)


class RequestContext:
    """ASGI middleware: binds each HTTP request to its id (named in the response) and, but
    for scrapes and probes, opens its server span, under an incoming ``traceparent`` when
    there is one. Outermost, so refusals name their request too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        received = headers.get(REQUEST_ID_HEADER.encode())
        received = received.decode("latin-1") if received is not None else None
        request_id = accept_request_id(received)
        traced = enabled() and scope.get("path") not in _UNTRACED_PATHS
        current = None

        async def send_start(message):
            if message["type"] == "http.response.start":
                if current is not None:
                    current.set_attribute("http.response.status_code", message["status"])
                if request_id != received:
                    message = _with_header(message, REQUEST_ID_HEADER.encode(),
                                           request_id.encode())
            await send(message)

        with bound_request_id(request_id):
            if not traced:
                await self.app(scope, receive, send_start)
                return
            header = headers.get(b"traceparent")
            parent = incoming_parent(header.decode("latin-1") if header else None)
            with span(f"{scope.get('method', 'HTTP')} {scope.get('path', '')}", parent,
                      **{"http.request.method": scope.get("method"),
                         "url.path": scope.get("path")}) as current:
                await self.app(scope, receive, send_start)


def _with_header(message: dict, name: bytes, value: bytes) -> dict:
    """A response start with header ``name`` set to ``value`` (replacing any)."""
    headers = [(k, v) for k, v in message.get("headers", []) if k != name]
    return {**message, "headers": [*headers, (name, value)]}
