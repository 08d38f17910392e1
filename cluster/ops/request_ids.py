"""Request ids: one per HTTP request, taken from ``x-request-id`` when the client (or a
proxy in front) sends a sane one, else generated; in a context variable while the request
runs, so every log line written meanwhile carries it (:class:`RequestIdFilter`), and
returned in the response's ``x-request-id`` header and ``conclave`` field.

Ray Serve's proxy already echoes the incoming ``x-request-id`` (or one it generated) in
the response, so the gateway adds the header only when its id differs from the one it
received: none came (outside Serve), or it was not acceptable (longer than 128
characters, or not printable ASCII without spaces), which the id replaces.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from contextvars import ContextVar

HEADER = "x-request-id"
_ACCEPTABLE = re.compile(r"[\x21-\x7e]{1,128}")
_CURRENT: ContextVar[str | None] = ContextVar("conclave_request_id", default=None)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [request %(request_id)s] %(message)s"


def accept(value: str | None) -> str:
    """``value`` when it is an acceptable id, else a new one."""
    if value is not None and _ACCEPTABLE.fullmatch(value):
        return value
    return uuid.uuid4().hex


def current() -> str | None:
    """The id of the request being handled in this context (None outside one)."""
    return _CURRENT.get()


@contextlib.contextmanager
def bound(request_id: str | None):
    """Run the block as part of request ``request_id``."""
    token = _CURRENT.set(request_id)
    try:
        yield request_id
    finally:
        _CURRENT.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` ("-" outside a request) on every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _CURRENT.get() or "-"
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


class RequestIds:
    """ASGI middleware: binds each HTTP request to its id and names it in the response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = dict(scope.get("headers") or []).get(HEADER.encode())
        received = received.decode("latin-1") if received is not None else None
        request_id = accept(received)

        async def send_with_id(message):
            if message["type"] == "http.response.start" and request_id != received:
                headers = [(k, v) for k, v in message.get("headers", []) if k != HEADER.encode()]
                message = {**message, "headers": [*headers, (HEADER.encode(),
                                                             request_id.encode())]}
            await send(message)

        with bound(request_id):
            await self.app(scope, receive, send_with_id)
