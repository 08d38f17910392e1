"""DrainBatcher: a key's next batch is formed when its previous one is done."""

from __future__ import annotations

import asyncio

import pytest

from cluster.serve.drain_batcher import DrainBatcher


class Recorder:
    """A batch function that records its batches and can be held open."""

    def __init__(self):
        self.batches: list[tuple[str, list]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.running: dict[str, int] = {}
        self.most_at_once = 0

    async def __call__(self, key, items):
        self.batches.append((key, list(items)))
        self.running[key] = self.running.get(key, 0) + 1
        self.most_at_once = max(self.most_at_once, self.running[key])
        await self.release.wait()
        self.running[key] -= 1
        if "boom" in items:
            raise ValueError("bad row")
        return [f"{key}:{item}" for item in items]


async def first_batch_held(first_item, **options) -> tuple:
    """A batcher whose batch function blocks until ``run.release`` is set, with one call
    (``first_item`` for key "a") already running alone."""
    run = Recorder()
    batcher = DrainBatcher(run, **options)
    run.release.clear()
    first = asyncio.create_task(batcher.submit("a", first_item))
    await asyncio.sleep(0)  # batch [first_item] starts and blocks
    return run, batcher, first


def test_calls_queued_while_a_batch_runs_form_the_next_batch():
    async def scenario():
        run, batcher, first = await first_batch_held(0, max_batch_size=4)
        rest = [asyncio.create_task(batcher.submit("a", i)) for i in range(1, 7)]
        await asyncio.sleep(0)
        assert batcher.queued("a") == 6
        run.release.set()
        results = await asyncio.gather(first, *rest)
        return run, results

    run, results = asyncio.run(scenario())
    assert results == [f"a:{i}" for i in range(7)]
    assert [items for _, items in run.batches] == [[0], [1, 2, 3, 4], [5, 6]]
    assert run.most_at_once == 1  # never two batches of one key at once


def test_keys_batch_apart_and_an_idle_key_waits_for_company():
    async def scenario():
        run = Recorder()
        batcher = DrainBatcher(run, max_batch_size=8, wait_s=0.05)
        calls = [batcher.submit(key, i) for i, key in enumerate("abab")]
        return run, await asyncio.gather(*calls)

    run, results = asyncio.run(scenario())
    assert results == ["a:0", "b:1", "a:2", "b:3"]
    assert sorted(run.batches) == [("a", [0, 2]), ("b", [1, 3])]


def test_a_failed_batch_fails_its_callers_only_and_cancelled_calls_are_skipped():
    async def scenario():
        run, batcher, first = await first_batch_held("x", max_batch_size=2)
        gone = asyncio.create_task(batcher.submit("a", "gone"))
        bad = [asyncio.create_task(batcher.submit("a", item)) for item in ("boom", "y")]
        good = asyncio.create_task(batcher.submit("a", "z"))
        await asyncio.sleep(0)
        gone.cancel()
        run.release.set()
        outcomes = await asyncio.gather(first, *bad, good, return_exceptions=True)
        return run, outcomes

    run, outcomes = asyncio.run(scenario())
    assert outcomes[0] == "a:x" and outcomes[3] == "a:z"
    assert all(isinstance(o, ValueError) for o in outcomes[1:3])
    assert [items for _, items in run.batches] == [["x"], ["boom", "y"], ["z"]]


def test_a_free_slot_takes_a_call_at_once_and_busy_slots_let_the_queue_form_a_batch():
    async def scenario():
        run, batcher, first = await first_batch_held(0, max_batch_size=4, concurrency=2)
        second = asyncio.create_task(batcher.submit("a", 1))  # the second slot is free
        await asyncio.sleep(0.01)
        snapshot = [items for _, items in run.batches]
        rest = [asyncio.create_task(batcher.submit("a", i)) for i in range(2, 7)]
        await asyncio.sleep(0.01)
        queued = batcher.queued("a")
        run.release.set()
        return run, snapshot, queued, await asyncio.gather(first, second, *rest)

    run, snapshot, queued, results = asyncio.run(scenario())
    assert snapshot == [[0], [1]]  # two batches running side by side
    assert queued == 5  # both slots busy: the rest waits, then fills batches
    assert results == [f"a:{i}" for i in range(7)]
    assert [items for _, items in run.batches][2:] == [[2, 3, 4, 5], [6]]
    assert run.most_at_once == 2


def test_the_worker_ends_when_every_queued_caller_gave_up():
    async def scenario():
        run, batcher, first = await first_batch_held(0, max_batch_size=4)
        gone = asyncio.create_task(batcher.submit("a", 1))
        await asyncio.sleep(0)
        gone.cancel()
        run.release.set()
        await asyncio.wait_for(first, 1)
        await asyncio.sleep(0.01)
        return batcher, run

    batcher, run = asyncio.run(scenario())
    assert not batcher._workers and [items for _, items in run.batches] == [[0]]


def test_bad_size():
    with pytest.raises(ValueError, match="at least 1"):
        DrainBatcher(Recorder(), max_batch_size=0)
    with pytest.raises(ValueError, match="at least 1"):
        DrainBatcher(Recorder(), max_batch_size=2, concurrency=0)
