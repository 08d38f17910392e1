"""Graceful shutdown of the gateway: count the HTTP requests in flight and, once closed,
refuse new ones with 503 (``Retry-After``) while those in flight finish.

``conclave serve`` closes the gate on SIGTERM/SIGINT (through the gateway's ``drain``),
waits for the count to reach zero or the grace period to pass, and only then shuts Serve
down: the router and the pools stay up until the last admitted request has its answer.
``/metrics`` stays open, so a scrape during the drain still works.
"""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse

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
