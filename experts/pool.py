"""ModelPool: loaded engines under a budget (a count, bytes, or both), evicted LRU.

A pool replica serves many experts but holds only a few models. ``get(key)`` loads on a
miss and evicts the least recently used engines until the pool fits its budget again;
an evicted engine is closed and its memory returned (CUDA cache emptied where there is one).
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

from experts.engine import GenerationEngine


@dataclass
class PoolStats:
    """Counters and cumulative timings of one pool."""

    loads: int = 0
    unloads: int = 0
    hits: int = 0
    load_seconds: float = 0.0
    unload_seconds: float = 0.0

    def as_dict(self) -> dict:
        """Plain dict, for metrics and JSON."""
        return asdict(self)


class ModelPool:
    """Engines by key, loaded on demand by ``loader(key)``; thread-safe.

    ``max_models`` bounds how many are resident, ``max_bytes`` their summed
    ``memory_bytes()``. The engine just asked for is never evicted to make room for
    itself, so one model larger than ``max_bytes`` still loads (alone)."""

    def __init__(
        self,
        loader: Callable[[str], GenerationEngine],
        *,
        max_models: int | None = None,
        max_bytes: int | None = None,
    ):
        if max_models is not None and max_models < 1:
            raise ValueError(f"max_models must be at least 1, got {max_models}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        self._loader = loader
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._engines: OrderedDict[str, GenerationEngine] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[str, threading.Event] = {}  # keys being loaded, set when done
        self.stats = PoolStats()

    def get(self, key: str) -> GenerationEngine:
        """The engine for ``key``, loaded if needed; marks it most recently used.

        Different keys load at the same time (a vLLM engine takes seconds to start its
        process); callers asking for a key being loaded wait for that load."""
        while True:
            with self._lock:
                engine = self._engines.get(key)
                if engine is not None:
                    self._engines.move_to_end(key)
                    self.stats.hits += 1
                    return engine
                waiting = self._loading.get(key)
                if waiting is None:
                    # Make room first, so the old model is freed before the new one loads.
                    self._evict(room_for_one=True)
                    self._loading[key] = threading.Event()
                    break
            waiting.wait()  # another caller's load of this key; then look again
        return self._load(key)

    def _load(self, key: str) -> GenerationEngine:
        start = time.perf_counter()
        try:
            engine = self._loader(key)
        finally:
            with self._lock:
                self._loading.pop(key).set()
        with self._lock:
            self.stats.load_seconds += time.perf_counter() - start
            self.stats.loads += 1
            self._engines[key] = engine
            self._evict(room_for_one=False, keep=key)
        return engine

    def peek(self, key: str) -> GenerationEngine | None:
        """The resident engine for ``key``, or None (does not load, nor count as a use)."""
        with self._lock:
            return self._engines.get(key)

    def is_loaded(self, key: str) -> bool:
        """Whether ``key`` is resident (does not count as a use)."""
        with self._lock:
            return key in self._engines

    def resident(self) -> list[str]:
        """Resident keys, least recently used first."""
        with self._lock:
            return list(self._engines)

    def memory_bytes(self) -> int:
        """Summed ``memory_bytes()`` of the resident engines."""
        with self._lock:
            return sum(engine.memory_bytes() for engine in self._engines.values())

    def unload(self, key: str) -> bool:
        """Close and drop ``key``; returns whether it was resident."""
        with self._lock:
            engine = self._engines.pop(key, None)
            if engine is None:
                return False
            self._close(engine)
            return True

    def clear(self) -> None:
        """Unload everything."""
        with self._lock:
            for key in list(self._engines):
                self.unload(key)

    def _evict(self, *, room_for_one: bool, keep: str | None = None) -> None:
        extra = len(self._loading) + (1 if room_for_one else 0)
        while self._engines:
            over_count = (
                self.max_models is not None and len(self._engines) + extra > self.max_models
            )
            over_bytes = self.max_bytes is not None and self.memory_bytes() > self.max_bytes
            if not (over_count or over_bytes):
                return
            oldest = next(iter(self._engines))
            if oldest == keep:
                return
            self.unload(oldest)

    def _close(self, engine: GenerationEngine) -> None:
        start = time.perf_counter()
        engine.close()
        del engine
        gc.collect()
        _empty_cuda_cache()
        self.stats.unload_seconds += time.perf_counter() - start
        self.stats.unloads += 1


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")  # only when some engine already imported it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
