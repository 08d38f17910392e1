"""What the gateway asks of the API keys: who is calling (and may they start), which
experts they may use, and booking what their answer used.

One :class:`Tenancy` per gateway replica, over the Redis every replica shares. Redis
down: a key seen in the last ``outage_grace_s`` is admitted without its limits (they
cannot be counted across replicas without Redis) and its usage waits in the replica;
any other key gets 503 (see :mod:`cluster.tenants.store`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from cluster.catalog import ExpertCatalog
from cluster.config import ConclaveConfig, TenantsConfig
from cluster.http.errors import ApiError
from cluster.ops.metrics import ConclaveMetrics
from cluster.panel.panel import Answer, live_decision
from cluster.tenants.keys import StoredKey
from cluster.tenants.limits import Limits
from cluster.tenants.store import REDIS_ERRORS, KeyStore, RedisBreaker
from cluster.tenants.usage import CallUsage, UsageEntry, UsageLedger
from experts.errors import ExpertError
from experts.spec import ExpertSpec
from routing.selection import Decision

OTHER = "other"


def connect_async(url: str):
    """A ``redis.asyncio`` client for ``url`` (resolved: ``unix://`` or ``redis://``), with
    short timeouts so an unreachable Redis is noticed within a request."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # One quick retry (a connection dropped by a restart), not redis-py's default backoff
    # of seconds: a request must not wait that long to learn that Redis is down.
    return redis.asyncio.Redis.from_url(url, decode_responses=True, socket_timeout=0.5,
                                        socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 1))


def tenancy_for(config: ConclaveConfig, catalog: ExpertCatalog,
                metrics: ConclaveMetrics) -> Tenancy | None:
    """A gateway replica's API keys when ``tenants.enabled``, else None (keys off)."""
    if not config.tenants.enabled:
        return None
    return Tenancy(config.tenants, connect_async(config.redis.url), config.redis.namespace,
                   catalog.get, metrics)


class KeyLabels:
    """Metric labels for key names: the first ``most`` names seen get their own, the
    rest share 'other', so a label set stays bounded however many keys are made."""

    def __init__(self, most: int):
        self._most = most
        self._named: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in self._named or len(self._named) < self._most:
            self._named.add(name)
            return name
        return OTHER


class Tenancy:
    """Keys, limits and usage for one gateway replica. ``spec_of(expert id)`` gives an
    expert's spec (its pool and price)."""

    def __init__(self, config: TenantsConfig, client, namespace: str,
                 spec_of: Callable[[str], ExpertSpec], metrics: ConclaveMetrics):
        breaker = RedisBreaker()
        self.store = KeyStore(client, namespace, config.key_cache_s, config.outage_grace_s,
                              breaker)
        self.limits = Limits(client, namespace)
        self.ledger = UsageLedger(client, self.limits, config.max_pending_usage,
                                  breaker=breaker)
        self._spec_of = spec_of
        self._metrics = metrics
        self._label = KeyLabels(config.metric_keys)

    async def authenticate(self, header: str | None) -> StoredKey:
        return await self.store.authenticate(header)

    async def admit(self, header: str | None) -> StoredKey:
        """The caller's key, once its limits let one more request start (401, 429, 503)."""
        record = await self.store.authenticate(header)
        label = self._label(record.name)
        try:
            await self.store.breaker.call(lambda: self.limits.admit(record))
        except ApiError as err:
            self._metrics.key_requests.labels(label, err.code or "limited").inc()
            raise
        except REDIS_ERRORS:  # a key the store honoured from its copy: serve it, unlimited
            pass
        self._metrics.key_requests.labels(label, "admitted").inc()
        return record

    def check_expert(self, record: StoredKey, expert: str) -> None:
        """403 unless ``record`` may use ``expert`` (a model asked for directly)."""
        if not self._allows(record, expert):
            raise ApiError(403, f"key {record.name!r} may not use expert {expert!r}",
                           type="permission_error", param="model", code="expert_not_allowed")

    def restrict(self, record: StoredKey, decision: Decision) -> Decision:
        """``decision`` with the experts ``record`` may not use replaced by the next
        allowed ones of its ranking (403 when none is left); a synthesiser it may not use
        gives way to the panel's own choice."""
        def allowed(expert: str) -> bool:
            return self._allows(record, expert)

        if not record.experts and not record.pools:
            return decision
        decision = live_decision(decision, allowed)
        if not decision.experts:
            raise ApiError(403, f"key {record.name!r} may use none of the experts this query "
                           "was routed to", type="permission_error", param="model",
                           code="expert_not_allowed")
        if decision.aggregator and not allowed(decision.aggregator):
            decision = dataclasses.replace(decision, aggregator=None)
        return decision

    async def book(self, record: StoredKey, calls: Sequence[Answer]) -> None:
        """Count one answered prompt's calls against ``record`` (limits, usage, metrics)."""
        usage = tuple(CallUsage(a.expert, a.prompt_tokens, a.completion_tokens,
                                a.completion_tokens * self._cost(a.expert) / 1e6)
                      for a in calls)
        await self.ledger.record(UsageEntry(record, usage))
        label = self._label(record.name)
        self._metrics.key_tokens.labels(label, "prompt").inc(
            sum(c.prompt_tokens for c in usage))
        self._metrics.key_tokens.labels(label, "completion").inc(
            sum(c.completion_tokens for c in usage))
        self._metrics.key_cost.labels(label).inc(sum(c.cost_usd for c in usage))

    def _allows(self, record: StoredKey, expert: str) -> bool:
        spec = self._spec(expert)
        return spec is not None and record.allows(expert, spec.pool)

    def _cost(self, expert: str) -> float:
        spec = self._spec(expert)
        return spec.cost if spec is not None else 0.0

    def _spec(self, expert: str) -> ExpertSpec | None:
        """The expert's spec; None once it is removed (no pool or price to read)."""
        try:
            return self._spec_of(expert)
        except ExpertError:
            return None
