"""ModelPool: LRU eviction under a count or byte budget, counters, closing evicted engines."""

from __future__ import annotations

import threading

import pytest

from experts.engine import Generation, GenerationEngine
from experts.pool import ModelPool


class SizedEngine(GenerationEngine):
    """An engine of a given size that records being closed."""

    def __init__(self, key: str, size: int):
        self.key, self.size, self.closed = key, size, False

    def generate(self, prompts, params=None, adapters=None):
        return [Generation(f"{self.key}:{p}", 1, 1) for p in prompts]

    def memory_bytes(self) -> int:
        return 0 if self.closed else self.size

    def close(self) -> None:
        self.closed = True


class Loader:
    def __init__(self, sizes: dict[str, int] | None = None):
        self.sizes = sizes or {}
        self.made: dict[str, list[SizedEngine]] = {}

    def __call__(self, key: str) -> SizedEngine:
        if key == "broken":
            raise ValueError("model 'broken' does not load")
        engine = SizedEngine(key, self.sizes.get(key, 100))
        self.made.setdefault(key, []).append(engine)
        return engine


def test_lru_eviction_order_and_counters():
    loader = Loader()
    pool = ModelPool(loader, max_models=2)
    pool.get("a")
    pool.get("b")
    pool.get("a")  # a is now the most recent
    pool.get("c")  # evicts b
    assert pool.resident() == ["a", "c"]
    assert loader.made["b"][0].closed and not loader.made["a"][0].closed
    pool.get("b")  # evicts a
    assert pool.resident() == ["c", "b"]
    assert pool.stats.as_dict() | {"load_seconds": 0, "unload_seconds": 0} == {
        "loads": 4,
        "unloads": 2,
        "hits": 1,
        "load_seconds": 0,
        "unload_seconds": 0,
    }
    assert pool.stats.load_seconds > 0 and pool.stats.unload_seconds > 0


def test_byte_budget():
    loader = Loader({"small": 100, "medium": 300, "large": 700, "huge": 2000})
    pool = ModelPool(loader, max_bytes=1000)
    for key in ["small", "medium", "large"]:
        pool.get(key)
    assert pool.resident() == ["medium", "large"]  # 1100 bytes did not fit
    assert pool.memory_bytes() == 1000
    pool.get("huge")  # larger than the budget: loads, alone
    assert pool.resident() == ["huge"]
    pool.get("small")
    assert pool.resident() == ["small"]
    assert loader.made["huge"][0].closed


def test_hit_returns_same_engine_and_unload():
    pool = ModelPool(Loader())
    first = pool.get("x")
    assert pool.get("x") is first and pool.is_loaded("x")
    assert pool.unload("x") is True and first.closed
    assert pool.unload("x") is False and not pool.is_loaded("x")
    assert pool.get("x") is not first
    assert pool.stats.loads == 2 and pool.stats.unloads == 1


def test_failed_load_leaves_nothing_resident():
    pool = ModelPool(Loader(), max_models=1)
    pool.get("a")
    with pytest.raises(ValueError, match="'broken'"):
        pool.get("broken")
    assert pool.resident() == [] and pool.stats.loads == 1


def test_concurrent_gets_load_once():
    loader = Loader()
    pool = ModelPool(loader, max_models=3)
    start = threading.Barrier(8)

    def use() -> None:
        start.wait()
        for key in ["a", "b", "a"]:
            pool.get(key)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loader.made["a"]) == 1 and len(loader.made["b"]) == 1
    assert pool.stats.loads == 2 and pool.stats.hits == 22


def test_bad_budget():
    with pytest.raises(ValueError, match="max_models"):
        ModelPool(Loader(), max_models=0)


def test_different_keys_load_side_by_side():
    both_loading = threading.Barrier(2, timeout=10)

    class SlowLoader(Loader):
        def __call__(self, key: str) -> SizedEngine:
            both_loading.wait()  # passes only while the other key is loading too
            return super().__call__(key)

    pool = ModelPool(SlowLoader(), max_models=2)
    threads = [threading.Thread(target=pool.get, args=(key,)) for key in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(pool.resident()) == ["a", "b"] and pool.stats.loads == 2
