"""ExpertPool deployment: one per configured pool, serving that pool's experts.

Requests carry the expert's *engine key* as Serve's multiplexed model id (a LoRA expert's
key is its base model's), so every expert on one base lands on replicas that already
hold that base, and ``@serve.batch`` (whose batches Serve splits by multiplexed id)
generates concurrent requests for those experts together, adapters mixed per row: the
online form of batching by assigned expert.

Each reply carries ``stats`` (batch size, seconds of model loads since the last reply),
which the gateway turns into metrics.
"""

from __future__ import annotations

import asyncio
import time

import redis
from ray import serve

from cluster.admin import allowed_roots
from cluster.catalog import ExpertCatalog
from cluster.config import parse_config
from cluster.expert_batch import Row, run_batch
from experts.errors import ExpertError
from experts.loader import ExpertLoader, adapter_of
from experts.pool import ModelPool
from experts.redis_conn import connect
from experts.registry import ExpertRegistry


class ExpertPoolServer:
    """Loads engines on demand (LRU, ``max_resident_models``) and generates in batches."""

    def __init__(self, config: dict, pool_name: str):
        cfg = parse_config(config)
        self.pool = next(p for p in cfg.pools if p.name == pool_name)
        self.registry = ExpertRegistry(connect(cfg.redis.url), namespace=cfg.redis.namespace)
        self.catalog = ExpertCatalog(self.registry).start()
        self.loader = ExpertLoader(self.catalog.get, allowed_roots(cfg.serving))
        self.models = ModelPool(self.loader, max_models=self.pool.max_resident_models)
        self._loads: list[float] = []
        # Set per pool at init (the decorators' defaults are per class).
        self._generate_batch.set_max_batch_size(self.pool.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(self.pool.batch_wait_timeout_s)
        async def engine(key: str):  # a plain function: Serve keeps its LRU state on it
            return await self._load_engine(key)

        self._engine = serve.multiplexed(
            max_num_models_per_replica=self.pool.max_resident_models
        )(engine)

    async def generate(self, expert_id: str, prompt: object, params: dict) -> dict:
        """One request for ``expert_id``; raises :class:`ExpertError` when it cannot run
        (the gateway then fails over)."""
        reply = await self._generate_batch(Row(expert_id, prompt, params))
        if "error" in reply:
            raise ExpertError(f"expert {expert_id!r}: {reply['error']}")
        return reply

    async def _load_engine(self, key: str):
        loads, started = self.models.stats.loads, time.perf_counter()
        engine = await asyncio.to_thread(self.models.get, key)
        if self.models.stats.loads > loads:  # not just a hit in the pool's own LRU
            self._loads.append(time.perf_counter() - started)
        return engine

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def _generate_batch(self, rows: list[Row]) -> list[dict]:
        engine = await self._engine(serve.get_multiplexed_model_id())
        live = await asyncio.to_thread(self._live, {row.expert for row in rows})
        results = await asyncio.to_thread(
            run_batch, engine, rows, lambda e: self._spec(e, live), self.loader.prepare,
            adapter_of,
        )
        loads, self._loads = self._loads, []
        stats = {"batch_size": len(rows), "loads": loads}
        for i, result in enumerate(results):
            result["stats"] = stats if i == 0 else {"batch_size": 0, "loads": []}
        return results

    def _live(self, expert_ids: set[str]) -> set[str]:
        """Experts still registered right now (a removed one gets no new work); the
        catalog's view when Redis cannot say."""
        try:
            return {e for e in expert_ids if e in self.registry}
        except (redis.RedisError, OSError):  # Redis down: keep serving from the catalog
            return {e for e in expert_ids if self.catalog.is_live(e)}

    def _spec(self, expert_id: str, live: set[str]):
        if expert_id not in live:
            raise ExpertError(f"expert {expert_id!r} was removed")
        if not self.catalog.is_live(expert_id):
            self.catalog.refresh()  # added a moment ago: the notification is on its way
        return self.catalog.get(expert_id)

    def stats(self) -> dict:
        return {"pool": self.pool.name, "resident": self.models.resident(),
                **self.models.stats.as_dict()}
