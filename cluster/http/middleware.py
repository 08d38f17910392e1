"""The gateway's own ASGI middlewares: graceful shutdown and a body-size limit.

Shutdown: count the HTTP requests in flight and, once closed, refuse new ones with 503
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
import time

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from cluster.http.errors import ApiError

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
