"""Batch concurrent calls per key, forming each batch when the key's previous batch is done.

Why not ``@serve.batch`` for generation: Serve's batcher closes a batch when its wait
timeout passes, whether or not the previous batch still runs, and queues it behind that
one. With a CPU-bound engine (one generate takes 100+ ms) batches then stay as small as
what arrives in one timeout window (about 2 rows per batch at concurrency 32 on the demo
pool). Here a key's next batch is taken only when its engine is free, so under load it
holds everything that queued meanwhile (up to ``max_batch_size``), and an idle key still
waits only ``wait_s`` for company.

``concurrency`` lets up to that many batches of one key run at once (the gateway sends a
key's batches to a pool of several replicas): a call arriving while a slot is free goes out
at once; under load the slots stay busy and the queue forms the next batches.

Plain asyncio (no Ray): the pool deployment runs one per replica, the gateway one per pool
and one for the router; unit-tested alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

# key, items → one result per item, in order
RunBatch = Callable[[Hashable, list[Any]], Awaitable[list[Any]]]


class DrainBatcher:
    """``await submit(key, item)`` returns ``item``'s result from one ``run(key, batch)``.

    At most ``concurrency`` batches per key run at a time; keys run independently. With
    ``max_batch_size`` 1 every item is sent alone at once, unthrottled (a benchmark's
    no-batching baseline)."""

    def __init__(self, run: RunBatch, max_batch_size: int, wait_s: float = 0.0,
                 concurrency: int = 1):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.concurrency = concurrency
        self._queues: dict[Hashable, deque] = {}
        self._workers: dict[Hashable, asyncio.Task] = {}
        self._arrived: dict[Hashable, asyncio.Event] = {}

    async def submit(self, key: Hashable, item: Any) -> Any:
        if self.max_batch_size == 1:
            return (await self._run(key, [item]))[0]
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, deque()).append((item, future))
        if key in self._workers:
            self._arrived[key].set()  # a free slot may take it now
        else:
            self._arrived[key] = asyncio.Event()
            self._workers[key] = asyncio.create_task(self._drain(key))
        return await future

    def queued(self, key: Hashable) -> int:
        """Calls for ``key`` waiting for a batch."""
        return len(self._queues.get(key, ()))

    async def _drain(self, key: Hashable) -> None:
        """Run batches for ``key`` until its queue is empty and none runs (then the worker
        ends): a batch starts whenever a slot is free and calls wait."""
        queue, arrived = self._queues[key], self._arrived[key]
        running: set[asyncio.Task] = set()
        try:
            if self.wait_s > 0 and len(queue) < self.max_batch_size:
                await asyncio.sleep(self.wait_s)  # idle until now: let a batch gather
            while True:
                while queue and len(running) < self.concurrency:
                    batch = self._take(queue)
                    if batch:
                        running.add(asyncio.create_task(self._run_one(key, batch)))
                if not running:  # and so the queue is empty
                    break
                arrived.clear()
                woken = asyncio.ensure_future(arrived.wait())
                done, _ = await asyncio.wait(running | {woken},
                                             return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                running -= done
        finally:  # the queue is empty here unless cancelled (the replica is stopping)
            for task in running:
                task.cancel()
            del self._workers[key]

    def _take(self, queue: deque) -> list[tuple[Any, asyncio.Future]]:
        batch = []
        while queue and len(batch) < self.max_batch_size:
            item, future = queue.popleft()
            if not future.done():  # the caller gave up (timeout, cancel): skip it
                batch.append((item, future))
        return batch

    async def _run_one(self, key: Hashable, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            results = await self._run(key, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
        except Exception as err:  # every caller of the batch gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
