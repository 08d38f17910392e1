"""An in-process pattern cache: the default for tests and single-process runs.

Nothing is shared between processes; a version change drops every older pattern.
"""

from __future__ import annotations

import time

import numpy as np

from routing.cache.base import PatternCache, PatternIndex


class MemoryPatternCache(PatternCache):
    """Patterns in a dict, near-duplicates through a local FAISS index, TTL by clock."""

    def __init__(self, *, similarity: float = 0.97, ttl_s: float = 86400,
                 store_answers: bool = False):
        super().__init__(similarity=similarity, store_answers=store_answers)
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.ttl_s = ttl_s
        self._patterns: dict[str, tuple[float, dict]] = {}  # key -> (expires at, decision)
        self._answers: dict[str, tuple[float, str]] = {}

    def clear(self) -> None:
        with self._lock:
            self._patterns.clear()
            self._answers.clear()
            self._index = PatternIndex()

    def _current(self, version: str) -> None:
        # Called under the lock: a new version makes every stored entry dead.
        if self._index.switch(version):
            self._patterns.clear()
            self._answers.clear()

    def _get(self, version: str, key: str) -> dict | None:
        with self._lock:
            self._current(version)
            return _live(self._patterns, key)

    def _nearest(self, version: str, scope: str,
                 vector: np.ndarray) -> list[tuple[str, float]]:
        with self._lock:
            self._current(version)
            return self._index.nearest(vector, scope)

    def _put(self, version: str, key: str, vector: np.ndarray, data: dict) -> None:
        with self._lock:
            self._current(version)
            self._patterns[key] = (time.monotonic() + self.ttl_s, data)
            self._index.add([key], vector[None, :])

    def _get_answer(self, version: str, key: str) -> str | None:
        with self._lock:
            self._current(version)
            return _live(self._answers, key)

    def _put_answer(self, version: str, key: str, answer: str) -> None:
        with self._lock:
            self._current(version)
            self._answers[key] = (time.monotonic() + self.ttl_s, answer)


def _live(entries: dict, key: str):
    entry = entries.get(key)
    if entry is None:
        return None
    expires, value = entry
    if time.monotonic() >= expires:
        del entries[key]
        return None
    return value
