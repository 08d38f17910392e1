"""The pattern cache in Redis: the source of truth every router replica shares.

Layout under ``{namespace}``:

- ``:pattern:{version}:{key}``   JSON ``{"vector": base64 float32, "decision": {...}}``, TTL
- ``:pattern-log:{version}``     list of the keys stored under that version (replicas
  follow it to keep their local FAISS indexes in sync; it expires with the last pattern)
- ``:answer:{version}:{key}``    a cached final answer (only with ``store_answers``), TTL

A key is ``{scope}.{sha1 of the normalised text}``, the scope a digest of the options the
decision (or answer) was made under (see :mod:`routing.cache.base`).
- ``:pattern-stats``             hash of shared counters: hits, misses, near_hits

Each replica builds its near-duplicate index from the log on the first lookup of a
version, then reads only the log's new tail on later lookups.

When Redis is unreachable the cache logs one warning, answers every call as a miss (and
counts an error) without touching Redis for ``retry_s`` seconds, then tries again; the
first success logs that it is back and rebuilds the local index.
"""

from __future__ import annotations

import base64
import json
import logging

import numpy as np
import redis

from experts.redis_conn import RedisBreaker, RedisUnavailable, connect, redact
from routing.cache.base import PatternCache, PatternIndex

log = logging.getLogger(__name__)
_STAT_FIELDS = ("hits", "misses", "near_hits")


class RedisPatternCache(PatternCache):
    """Routing patterns shared through Redis (see module doc)."""

    def __init__(self, client_or_url: redis.Redis | str, *, namespace: str = "conclave",
                 similarity: float = 0.97, ttl_s: int = 86400, store_answers: bool = False,
                 retry_s: float = 5.0):
        super().__init__(similarity=similarity, store_answers=store_answers)
        if int(ttl_s) < 1:
            raise ValueError(f"ttl_s must be a whole number of seconds >= 1, got {ttl_s}")
        if isinstance(client_or_url, str):
            self.where = redact(client_or_url)
            client_or_url = connect(client_or_url)
        else:
            self.where = "the given Redis client"
        self.client = client_or_url
        self.namespace = namespace
        self.ttl_s = int(ttl_s)
        self._offset = 0  # log entries of the current version already indexed
        self._stale = False  # set when Redis comes back: the local index may be wrong
        where = self.where.replace("%", "%%")
        self._breaker = RedisBreaker(
            log, f"pattern cache: Redis at {where} unreachable (%s); routing carries on "
            "uncached until it is back", f"pattern cache: Redis at {where} is back; caching "
            "resumed", retry_s=retry_s, on_back=self._mark_stale)

    # -- keys ---------------------------------------------------------------------------------
    def _pattern(self, version: str, key: str) -> str:
        return f"{self.namespace}:pattern:{version}:{key}"

    def _log(self, version: str) -> str:
        return f"{self.namespace}:pattern-log:{version}"

    def _answer(self, version: str, key: str) -> str:
        return f"{self.namespace}:answer:{version}:{key}"

    @property
    def _stats_key(self) -> str:
        return f"{self.namespace}:pattern-stats"

    # -- the backend --------------------------------------------------------------------------
    def _get(self, version: str, key: str) -> dict | None:
        raw = self._redis(lambda r: r.get(self._pattern(version, key)))
        return None if raw is None else json.loads(raw)["decision"]

    def _nearest(self, version: str, scope: str,
                 vector: np.ndarray) -> list[tuple[str, float]]:
        with self._lock:
            self._sync(version)
            return self._index.nearest(vector, scope)

    def _put(self, version: str, key: str, vector: np.ndarray, data: dict) -> None:
        value = json.dumps({"vector": _encode(vector), "decision": data})

        def write(r: redis.Redis):
            pipe = r.pipeline(transaction=False)
            pipe.set(self._pattern(version, key), value, ex=self.ttl_s)
            pipe.rpush(self._log(version), key)
            pipe.expire(self._log(version), self.ttl_s)
            pipe.execute()

        self._redis(write)
        with self._lock:
            if self._index.version == version:
                self._index.add([key], vector[None, :])

    def _get_answer(self, version: str, key: str) -> str | None:
        return self._redis(lambda r: r.get(self._answer(version, key)))

    def _put_answer(self, version: str, key: str, answer: str) -> None:
        self._redis(lambda r: r.set(self._answer(version, key), answer, ex=self.ttl_s))

    def _count(self, *, hit: bool, near: bool) -> None:
        super()._count(hit=hit, near=near)
        fields = ["hits", "near_hits"] if near else ["hits"] if hit else ["misses"]

        def bump(r: redis.Redis):
            pipe = r.pipeline(transaction=False)
            for name in fields:
                pipe.hincrby(self._stats_key, name, 1)
            pipe.execute()

        try:
            self._redis(bump)
        except (RedisUnavailable, redis.RedisError, OSError) as err:
            self._failed("count", err)

    # -- shared state -------------------------------------------------------------------------
    def shared_stats(self) -> dict[str, int]:
        """The counters of every replica together, from Redis (raises if unreachable)."""
        raw = self._redis(lambda r: r.hgetall(self._stats_key))
        return {name: int(raw.get(name, 0)) for name in _STAT_FIELDS}

    def clear(self) -> None:
        """Delete every pattern, log, answer and shared counter of this namespace."""

        def wipe(r: redis.Redis):
            for pattern in ("pattern:*", "pattern-log:*", "answer:*", "pattern-stats"):
                keys = list(r.scan_iter(match=f"{self.namespace}:{pattern}", count=500))
                for start in range(0, len(keys), 500):
                    r.delete(*keys[start:start + 500])

        self._redis(wipe)
        with self._lock:
            self._index = PatternIndex()
            self._offset = 0

    def _sync(self, version: str) -> None:
        """Bring the local index up to the version's log (called under the lock)."""
        log_key = self._log(version)
        length = self._redis(lambda r: r.llen(log_key))
        if self._stale or length < self._offset:  # Redis restarted or the log was cleared
            self._index, self._offset, self._stale = PatternIndex(), 0, False
        if self._index.switch(version):
            self._offset = 0
        if length == self._offset:
            return
        fresh = self._redis(lambda r: r.lrange(log_key, self._offset, length - 1))
        todo = [key for key in dict.fromkeys(fresh) if key not in self._index]
        if todo:
            raws = self._redis(lambda r: r.mget([self._pattern(version, k) for k in todo]))
            found = [(k, _decode(json.loads(raw)["vector"])) for k, raw in zip(todo, raws, strict=True)
                     if raw is not None]
            if found:
                self._index.add([k for k, _ in found], np.stack([v for _, v in found]))
        self._offset = length

    def _redis(self, operation):
        """Run ``operation(client)`` through the breaker (see module doc)."""
        return self._breaker.call(lambda: operation(self.client))

    def _mark_stale(self) -> None:
        self._stale = True


def _encode(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode("ascii")


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32)
