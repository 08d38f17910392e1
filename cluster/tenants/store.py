"""The API keys in Redis (the truth, shared by every gateway replica) and each replica's
short local copy of the records it has used.

- A record is read again once it is ``fresh_s`` old (default 1 s), so a key revoked on
  one replica is refused by every replica within that time.
- Redis down: a key whose record this replica read in the last ``outage_grace_s`` (default
  60 s) is still honoured from the copy (its callers keep being served through a short
  outage); a key not seen in that time is refused with 503 and ``Retry-After`` (a new
  key, or one revoked meanwhile, cannot be told from a forged one without Redis).
- After a failed Redis call the replica leaves Redis alone for a second
  (:class:`RedisBreaker`), so a Redis that does not answer at all slows one request per
  second, not every request.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC

import redis

from cluster.http.errors import ApiError
from cluster.tenants.keys import KeyFormatError, KeySpec, StoredKey, new_key, parse_header

log = logging.getLogger(__name__)
REDIS_ERRORS = (redis.RedisError, OSError)


class RedisSkipped(redis.ConnectionError):
    """Not sent: Redis failed a moment ago (:class:`RedisBreaker`)."""


class RedisBreaker:
    """After a Redis call fails, calls in the next ``pause_s`` fail at once with
    :class:`RedisSkipped` instead of waiting for their own timeouts."""

    def __init__(self, pause_s: float = 1.0):
        self._pause_s = pause_s
        self._until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self._until

    async def call(self, work):
        """``await work()`` unless open; a Redis failure opens it for ``pause_s``."""
        if self.open:
            raise RedisSkipped("Redis failed a moment ago; not asked")
        try:
            return await work()
        except REDIS_ERRORS as err:
            log.warning("Redis unreachable (%s): keys are served from local copies, usage "
                        "waits; asking again in %g s", type(err).__name__, self._pause_s)
            self._until = time.monotonic() + self._pause_s
            raise


def unauthorized(message: str, param: str = "api_key") -> ApiError:
    return ApiError(401, message, type="authentication_error", param=param,
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def store_unavailable() -> ApiError:
    return ApiError(503, "the key store (Redis) is unreachable and this key was not seen "
                    "recently; retry shortly", type="api_error", code="key_store_unavailable",
                    headers={"Retry-After": "2"})


class KeyStore:
    """Create, list, revoke and check keys; ``client`` is a ``redis.asyncio`` client."""

    def __init__(self, client, namespace: str, fresh_s: float = 1.0,
                 outage_grace_s: float = 60.0, breaker: RedisBreaker | None = None):
        self._redis = client
        self.breaker = breaker or RedisBreaker()
        self._ns = f"{namespace}:apikey"
        self._fresh_s = fresh_s
        self._grace_s = outage_grace_s
        self._copies: dict[str, tuple[StoredKey, float]] = {}  # id -> record, read at

    async def create(self, spec: KeySpec) -> tuple[str, StoredKey]:
        """A new key for ``spec``: the plain key (returned once, stored nowhere) and its
        record. 409 when a live key has the same name."""
        plain, record = new_key(spec)
        if not await self._redis.hsetnx(f"{self._ns}:names", spec.name, record.id):
            raise ApiError(409, f"a live key named {spec.name!r} exists; revoke it first",
                           param="name", code="key_exists")
        await self._redis.set(f"{self._ns}:{record.id}", record.model_dump_json())
        await self._redis.sadd(f"{self._ns}:ids", record.id)
        return plain, record

    async def list(self) -> list[StoredKey]:
        ids = sorted(await self._redis.smembers(f"{self._ns}:ids"))
        raw = await self._redis.mget([f"{self._ns}:{key_id}" for key_id in ids]) if ids else []
        records = [StoredKey.model_validate_json(item) for item in raw if item]
        return sorted(records, key=lambda r: r.created_at)

    async def revoke(self, name: str) -> StoredKey:
        """Revoke the live key named ``name`` (404 when there is none)."""
        key_id = await self._redis.hget(f"{self._ns}:names", name)
        record = await self._read(key_id) if key_id else None
        if record is None:
            raise ApiError(404, f"no live key named {name!r}", param="name",
                           code="key_not_found")
        record.revoked_at = time.time()
        await self._redis.set(f"{self._ns}:{key_id}", record.model_dump_json())
        await self._redis.hdel(f"{self._ns}:names", name)
        self._copies.pop(key_id, None)
        return record

    async def authenticate(self, header: str | None) -> StoredKey:
        """The live record of the key in ``header``; 401 (naming the field) for a missing,
        malformed, unknown, wrong, revoked or expired key; 503 when Redis is down and the
        key was not seen within the grace time."""
        try:
            key_id, secret = parse_header(header)
        except KeyFormatError as err:
            raise unauthorized(str(err), err.field) from None
        record = await self._record(key_id)
        if record is None or not record.matches(secret):
            raise unauthorized("the API key is not valid")
        if record.revoked_at is not None:
            raise unauthorized(f"the API key {record.name!r} was revoked")
        if record.expired():
            raise unauthorized(f"the API key {record.name!r} expired at "
                               f"{record.expires_at.astimezone(UTC).isoformat()}")
        return record

    async def _record(self, key_id: str) -> StoredKey | None:
        copy = self._copies.get(key_id)
        age = time.monotonic() - copy[1] if copy else float("inf")
        if age <= self._fresh_s:
            return copy[0]
        try:
            record = await self.breaker.call(lambda: self._read(key_id))
        except REDIS_ERRORS:
            if age <= self._grace_s:  # the breaker logged the outage
                return copy[0]
            raise store_unavailable() from None
        if record is None:
            self._copies.pop(key_id, None)
        else:
            self._copies[key_id] = (record, time.monotonic())
        return record

    async def _read(self, key_id: str) -> StoredKey | None:
        raw = await self._redis.get(f"{self._ns}:{key_id}")
        return StoredKey.model_validate_json(raw) if raw else None
