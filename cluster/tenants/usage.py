"""Usage per key and per expert, in Redis: every call of a panel (each member, each
stand-in that answered, the synthesis) with its prompt and completion tokens and its cost
(the expert's ``cost``, USD per million generated tokens).

One answered prompt is one :class:`UsageEntry`, written by one script call together with
the key's token counts for its limits. While Redis is unreachable, entries wait in this
replica (at most ``max_pending``, oldest dropped first, each drop logged) and are written
with the next entry that gets through, or by a retry every ``retry_s``: an outage delays
the books, it does not empty them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from cluster.tenants.keys import StoredKey
from cluster.tenants.limits import Limits
from cluster.tenants.store import REDIS_ERRORS, RedisBreaker

log = logging.getLogger(__name__)
_FIELDS = ("prompt_tokens", "completion_tokens", "calls", "cost_usd")


@dataclass(frozen=True)
class CallUsage:
    """One expert call's share of a request."""

    expert: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = 0.0


@dataclass(frozen=True)
class UsageEntry:
    """The calls one answered prompt of one key made."""

    key: StoredKey
    calls: tuple[CallUsage, ...]

    @property
    def tokens(self) -> int:
        return sum(c.prompt_tokens + c.completion_tokens for c in self.calls)


class UsageLedger:
    """Writes :class:`UsageEntry` records and reads a key's totals back."""

    def __init__(self, client, limits: Limits, max_pending: int = 10_000,
                 retry_s: float = 1.0, breaker: RedisBreaker | None = None):
        self._redis = client
        self._breaker = breaker or RedisBreaker()
        self._limits = limits
        self._pending: deque[UsageEntry] = deque()
        self._max_pending = max_pending
        self._retry_s = retry_s
        self._retrying: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        """Entries waiting for Redis on this replica."""
        return len(self._pending)

    async def record(self, entry: UsageEntry) -> bool:
        """Book ``entry`` (and any that waited); False when Redis refused and it waits."""
        if len(self._pending) >= self._max_pending:
            dropped = self._pending.popleft()
            log.error("usage of key %s dropped: %d entries waiting for Redis",
                      dropped.key.name, self._max_pending)
        self._pending.append(entry)
        written = await self.flush()
        if not written and (self._retrying is None or self._retrying.done()):
            self._retrying = asyncio.create_task(self._retry())
        return written

    async def _retry(self) -> None:
        """Write what waits once Redis is back, even if no request comes meanwhile."""
        while self._pending:
            await asyncio.sleep(self._retry_s)
            await self.flush()

    async def flush(self) -> bool:
        async with self._lock:
            batch = list(self._pending)
            if not batch:
                return True
            # one entry is one script call, atomic as it is; several (after an outage) go in
            # one MULTI/EXEC, so a retry never books part of them twice
            pipe = self._redis.pipeline(transaction=len(batch) > 1)
            for entry in batch:
                await self._queue(pipe, entry)
            try:
                await self._breaker.call(pipe.execute)
            except REDIS_ERRORS:  # keep them; the next entry or the retry writes them
                return False
            for _ in batch:
                self._pending.popleft()
            return True

    async def _queue(self, pipe, entry: UsageEntry) -> None:
        """One script call: the key's token totals for its limits, and its usage."""
        usage: list[tuple[str, str, int | float]] = []
        for call in entry.calls:
            usage += [("i", f"{call.expert}|prompt_tokens", call.prompt_tokens),
                      ("i", f"{call.expert}|completion_tokens", call.completion_tokens),
                      ("i", f"{call.expert}|calls", 1)]
            if call.cost_usd:
                usage.append(("f", f"{call.expert}|cost_usd", call.cost_usd))
        await self._limits.count(pipe, entry.key, entry.tokens, usage)

    async def read(self, record: StoredKey) -> dict:
        """The key's totals and per-expert usage, and its current budget period."""
        raw = await self._redis.hgetall(self._limits.keys(record.id)["usage"])
        experts: dict[str, dict] = {}
        for field, value in raw.items():
            expert, _, name = field.rpartition("|")
            if name in _FIELDS:
                number = float(value) if name == "cost_usd" else int(value)
                experts.setdefault(expert, dict.fromkeys(_FIELDS, 0))[name] = number
        totals = {name: sum(e[name] for e in experts.values()) for name in _FIELDS}
        totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
        return {"object": "usage", "key": record.name, "id": record.id,
                "requests": int(raw.get("requests", 0)), **totals,
                "experts": dict(sorted(experts.items())),
                "budget_period": await self._limits.used(record)}
