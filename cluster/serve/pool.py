"""ExpertPool deployment: one per configured pool, serving that pool's experts.

Requests carry the expert's *engine key* as Serve's multiplexed model id (a LoRA expert's
key is its base model's), so every expert on one base lands on replicas that already
hold that base: the online form of batching by assigned expert.
- A vLLM engine batches by itself: every row goes straight in as its own request and
  joins the running batch at token level (continuous batching), adapters mixed.
- A batch engine (HF, replay) gets concurrent rows together from a
  :class:`~cluster.serve.drain_batcher.DrainBatcher` keyed by that id, adapters mixed per row.
  (Not ``@serve.batch``: it closes batches on a timer while the engine is still busy, see
  :mod:`cluster.serve.drain_batcher`.)
The gateway sends its coalesced rows as one ``generate_many`` call; ``generate_stream``
returns one row's text as it is generated (the row still generates with the others).
A vLLM engine whose process died is restarted in place, by the rows caught by the death
(which are then retried once) or by ``check_health`` when none was; the replica reports
unhealthy, so that Serve replaces it, only when that restart failed.

Requests and replies are :mod:`cluster.serve.messages`; a batch's first reply carries its
:class:`~cluster.serve.messages.BatchStats`, which the gateway turns into metrics.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from contextlib import aclosing

import ray
import redis
from ray import serve

from cluster.catalog import ExpertCatalog
from cluster.config import build_offline_pool, parse_config
from cluster.http.admin import allowed_roots
from cluster.ops.tracing import install_logging, record_span, setup_tracing
from cluster.panel.sink_stream import Finished, sink_stream
from cluster.serve.drain_batcher import DrainBatcher
from cluster.serve.messages import BatchStats, ExpertReply, ExpertRequest
from cluster.serve.pool_batch import Row, run_batch, run_continuous
from experts.errors import ExpertError
from experts.loader import ExpertLoader, adapter_of, engine_key
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from routing.encoder import build_encoder

log = logging.getLogger(__name__)


class ExpertPoolServer:
    """Loads engines on demand (Serve's multiplexed LRU, ``max_resident_models``) and
    generates in batches."""

    async def __init__(self, config: dict, pool_name: str):
        """Async, so that Serve marks a new replica ready (and routes to it) only once its
        preloaded engines are up: a replica added by the autoscaler or moved off a lost node
        takes no request that would wait out an engine's start."""
        cfg = parse_config(config, paths_on_load=True)
        self.pool = next(p for p in cfg.pools if p.name == pool_name)
        setup_tracing(cfg.tracing, self.pool.deployment_name)
        install_logging()
        build_offline_pool(cfg.demo_pool)  # its files live in each node's cache dir
        self.registry = ExpertRegistry(connect(cfg.redis.url), namespace=cfg.redis.namespace)
        self.catalog = ExpertCatalog(self.registry).start()
        self.embedder = LazyEmbedder(cfg.encoder)
        self.loader = ExpertLoader(self.catalog.get, allowed_roots(cfg.serving),
                                   embed=self.embedder, engines=self.pool.engine_choice())
        self._resident: weakref.WeakValueDictionary[str, Resident] = (
            weakref.WeakValueDictionary())  # a view of Serve's cache, by engine key
        self._preloaded: dict[str, Resident] = {}  # loaded by _warm_up, handed to Serve
        self.catalog.on_change(self._forget_removed)
        self._loads: list[float] = []
        self._restarts: dict[str, asyncio.Task] = {}  # engine key -> restart by check_health
        self.rows_served = 0
        self.batcher = DrainBatcher(self._generate_batch, self.pool.max_batch_size,
                                    self.pool.batch_wait_timeout_s)
        limit_torch_threads(self.pool.num_cpus)

        async def engine(key: str) -> Resident:  # a plain function: Serve keeps its LRU on it
            return self._preloaded.pop(key, None) or await self._load(key)

        # The replica's one engine cache: Serve's, which also reports the resident keys for
        # multiplexed routing and closes what it evicts (Resident.__del__).
        self._engine = serve.multiplexed(
            max_num_models_per_replica=self.pool.max_resident_models
        )(engine)
        if self.pool.preload:
            await self._warm_up()

    async def _warm_up(self) -> None:
        """Load the pool's first ``max_resident_models`` engines, so the first requests
        find them loaded, and Serve's multiplexed routing, which sends a model's requests
        only to replicas that report it until those are saturated, spreads them over every
        replica instead of piling them on whichever happened to load it first."""
        keys = dict.fromkeys(engine_key(s) for s in self.catalog.specs() if s.pool == self.pool.name)
        keys = list(keys)[: self.pool.max_resident_models]
        # Started side by side first (Serve's multiplexed loader takes one model at a time,
        # and a vLLM engine takes seconds to start its process), then handed to Serve.
        loaded = await asyncio.gather(*map(self._load, keys), return_exceptions=True)
        self._preloaded = {key: one for key, one in zip(keys, loaded, strict=True)
                           if isinstance(one, Resident)}
        for key in keys:
            try:
                await self._engine(key)
            except Exception as err:  # a bad expert must not stop the replica; calls report it
                log.warning("pool %s: cannot preload %s: %s", self.pool.name, key, err)

    async def generate_many(self, requests: list[ExpertRequest]) -> list[ExpertReply]:
        """The gateway's coalesced requests for this replica's engine key, in one call.
        They join the key's queue together, so they generate in one batch (with whatever
        else waits there). A request that cannot run gets a failed reply; the others still
        answer."""
        return await self._generate([Row(request) for request in requests])

    async def generate_stream(self, request: ExpertRequest):
        """One request whose text comes back as it is generated: each text delta (a
        ``str``), then its :class:`ExpertReply` (which may carry an error). The row still
        joins its key's batch; only its text is live."""
        async with aclosing(sink_stream(lambda sink: self._generate([Row(request, sink)]))
                            ) as items:  # the caller left: the row is skipped
            async for item in items:
                yield item.result[0] if isinstance(item, Finished) else item

    async def _generate(self, rows: list[Row]) -> list[ExpertReply]:
        key = serve.get_multiplexed_model_id()
        engine = (await self._engine(key)).engine
        if engine.continuous:
            replies = await self._generate_continuous(key, engine, rows)
        else:
            replies = await asyncio.gather(*(self.batcher.submit(key, row) for row in rows),
                                           return_exceptions=True)
        return [ExpertReply.failed(row.request.expert, r) if isinstance(r, Exception) else r
                for row, r in zip(rows, replies, strict=True)]

    async def _load(self, key: str) -> Resident:
        """Load ``key``'s engine (in a thread); the load time goes in the next reply."""
        started = time.perf_counter()
        resident = Resident(await asyncio.to_thread(self.loader, key))
        self._loads.append(time.perf_counter() - started)
        self._resident[key] = resident
        return resident

    async def _generate_batch(self, key: str, rows: list[Row]) -> list[ExpertReply]:
        engine = (await self._engine(key)).engine
        started, wall = time.perf_counter(), time.time_ns()
        results = await asyncio.to_thread(self._run_rows, engine, rows)
        return self._finished(key, rows, results, started, wall)

    async def _generate_continuous(self, key: str, engine,
                                   rows: list[Row]) -> list[ExpertReply]:
        started, wall = time.perf_counter(), time.time_ns()
        live = await asyncio.to_thread(self._live, {row.request.expert for row in rows})
        replies = await run_continuous(engine, rows, lambda e: self._spec(e, live),
                                       self.loader.prepare)
        return self._finished(key, rows, replies, started, wall)

    def _finished(self, key: str, rows: list[Row], replies: list[ExpertReply], started: float,
                  wall: int) -> list[ExpertReply]:
        """The replies of one batch (or one call's rows); the first carries the batch's
        :class:`BatchStats`."""
        loads, self._loads = tuple(self._loads), []
        self.rows_served += len(rows)
        stats = BatchStats(len(rows), time.perf_counter() - started, loads)
        replies = [replies[0].with_stats(stats), *replies[1:]] if replies else replies
        trace_batch(self.pool.name, key, rows, replies, wall)
        return replies

    def _forget_removed(self, _added, removed, _version) -> None:
        """A removed LoRA expert's adapter leaves the engines that hold it."""
        for engine in self.engines().values():
            for expert_id in removed:
                if expert_id in getattr(engine, "adapters", {}):
                    engine.unload_adapter(expert_id)

    async def check_health(self) -> None:
        """Serve's health probe. A resident vLLM engine whose process died with no request
        on it (a request restarts its engine itself) is restarted here, in the background;
        the replica is unhealthy (Serve replaces it) only when such a restart failed."""
        for key, engine in self.engines().items():
            restart = self._restarts.get(key)
            if not getattr(engine, "errored", False) or engine.restarting:
                continue
            if restart is not None and not restart.done():
                continue  # started by an earlier probe, its thread not yet in restart()
            if restart is not None and not restart.cancelled() and restart.exception():
                raise RuntimeError(f"pool {self.pool.name}: cannot restart the engine of "
                                   f"{key}: {restart.exception()}")
            log.error("pool %s: the engine process of %s died; restarting it",
                      self.pool.name, key)
            self._restarts[key] = asyncio.create_task(asyncio.to_thread(engine.restart))

    def engines(self) -> dict:
        """The resident engines, by engine key (not closed)."""
        return {key: one.engine for key, one in list(self._resident.items()) if not one.closed}

    def __del__(self):
        # Serve deletes the replica on shutdown: stop the engine processes with it.
        for resident in list(getattr(self, "_resident", {}).values()):
            resident.close()

    def _run_rows(self, engine, rows: list[Row]) -> list[ExpertReply]:
        """One batch, in a worker thread (the registry check is a Redis round trip)."""
        live = self._live({row.request.expert for row in rows})
        return run_batch(engine, rows, lambda e: self._spec(e, live), self.loader.prepare,
                         adapter_of, embed=self.embedder)

    def _live(self, expert_ids: set[str]) -> set[str]:
        """Experts still registered right now (a removed one gets no new work); the
        catalog's view when Redis cannot say."""
        try:
            return self.registry.registered(expert_ids)
        except (redis.RedisError, OSError):  # Redis down: keep serving from the catalog
            return {e for e in expert_ids if self.catalog.is_live(e)}

    def _spec(self, expert_id: str, live: set[str]):
        if expert_id not in live:
            raise ExpertError(f"expert {expert_id!r} was removed")
        if not self.catalog.is_live(expert_id):
            self.catalog.refresh()  # added a moment ago: the notification is on its way
        return self.catalog.get(expert_id)

    def stats(self) -> dict:
        """This replica: its node, the experts its catalog holds, rows served, engines."""
        return {"pool": self.pool.name, "node": ray.get_runtime_context().get_node_id(),
                "experts": self.catalog.ids(), "rows_served": self.rows_served,
                "resident": sorted(self.engines())}


class Resident:
    """One loaded engine as Serve's multiplexed cache holds it. Serve calls ``__del__`` on
    what it evicts (and the garbage collector when the replica goes): the engine closes."""

    def __init__(self, engine):
        self.engine = engine
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.engine.close()

    __del__ = close


class LazyEmbedder:
    """``encoder.encode`` of the app's sentence encoder, loaded on first use: only replicas
    serving a mixture expert need it (its members' ``g_i``, each row's query ``q``)."""

    def __init__(self, encoder_config):
        self.config = encoder_config
        self._encoder = None
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]):
        with self._lock:
            if self._encoder is None:
                self._encoder = build_encoder(self.config)
        return self._encoder.encode(list(texts))


def limit_torch_threads(num_cpus: float) -> None:
    """One torch thread per reserved core (one when none or a fraction is reserved): several
    replicas sharing cores each with a full BLAS thread pool run many times slower."""
    import torch

    torch.set_num_threads(max(1, int(num_cpus)))


def trace_batch(pool: str, key: str, rows: list[Row], replies: list[ExpertReply],
                start_ns: int) -> None:
    """One span per traced row of a finished batch, under that row's own trace."""
    end_ns = time.time_ns()
    for row, reply in zip(rows, replies, strict=True):
        record_span("pool.generate", row.request.trace, start_ns, end_ns, **{
            "conclave.pool": pool, "conclave.engine": key, "conclave.expert": row.request.expert,
            "conclave.batch_size": len(rows),
            "conclave.error": None if reply.error is None else str(reply.error),
            "conclave.prompt_tokens": reply.prompt_tokens,
            "conclave.completion_tokens": reply.completion_tokens})
