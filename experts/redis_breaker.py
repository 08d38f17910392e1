"""Redis calls for a part that must keep working while Redis is away (the pattern cache,
the stored aggregator choice): a circuit breaker.

The first failure logs one warning and re-raises; for ``retry_s`` seconds after any failure
calls fail fast with :class:`RedisUnavailable` without touching Redis (a request must not
wait on connect timeouts during an outage); then Redis is tried again. The first success
after an outage logs that Redis is back and runs ``on_back``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

T = TypeVar("T")


class RedisUnavailable(RuntimeError):
    """Redis is known to be down; the call was not attempted."""


class RedisBreaker:
    """Runs ``call(operation)``; ``down`` is a log format with one ``%s`` (the error),
    ``back`` a plain message, both logged on ``logger``. ``errors`` are the exceptions that
    count as Redis being away."""

    def __init__(self, logger: logging.Logger, down: str, back: str, retry_s: float = 5.0,
                 on_back: Callable[[], None] | None = None,
                 errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)):
        self.logger, self.down_message, self.back_message = logger, down, back
        self.retry_s, self.on_back, self.errors = retry_s, on_back, errors
        self.down = False
        self._retry_at = 0.0

    def call(self, operation: Callable[[], T]) -> T:
        if self.down and time.monotonic() < self._retry_at:
            raise RedisUnavailable("Redis is unreachable (not retried yet)")
        try:
            result = operation()
        except self.errors as err:
            self._retry_at = time.monotonic() + self.retry_s
            if not self.down:
                self.down = True
                self.logger.warning(self.down_message, err)
            raise
        if self.down:
            self.down = False
            self.logger.warning(self.back_message)
            if self.on_back is not None:
                self.on_back()
        return result
