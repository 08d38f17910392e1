"""The pattern-cache contract: a routing decision remembered per query.

A stored pattern is found again, under the same routing options, by

- the hash of the *normalised* query text (exact hit: case and spacing do not matter), or
- its embedding: the nearest stored pattern with cosine ≥ ``similarity`` (near hit), the
  nearest-stored-pattern idea of PreMoe's task patterns, applied to routing.

Every key carries the registry ``version``: adding or removing an expert changes the
version, so old patterns are simply never found again (they expire by TTL). Every key
also carries its *scope*: :meth:`RouteOptions.decision_key` for a decision (the same
query asked with k=2 and k=3 has two patterns, each found again by its own options) and
:meth:`RouteOptions.answer_key` for an answer (an answer made under other options or
sampling parameters is never served). A key reads ``{scope}.{sha1 of the text}``.

The cache never fails a request: :meth:`PatternCache.lookup` and :meth:`PatternCache.store`
swallow backend errors (counted in ``errors``; the backend says how it logs them).
Final answers can be cached too (``store_answers=True``; exact text only, since a
near-duplicate question may well need another answer).

Near hits come from :class:`PatternIndex`: FAISS indexes over the embeddings of the patterns
stored under one registry version, one index per scope, so a near hit is only ever a pattern
made under the same options. Only the current version is indexed: when a lookup or store
brings a new version, the old patterns are dead (their experts changed), and the indexes
start empty again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from routing.options import RouteOptions
from routing.selection import Decision

log = logging.getLogger(__name__)
_SPACES = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Case-folded, trimmed, inner whitespace collapsed: what the exact key hashes."""
    return _SPACES.sub(" ", text).strip().casefold()


def pattern_key(scope: str, text: str) -> str:
    """The exact-match key of a query under ``scope``: the scope, then the sha1 of the
    normalised text."""
    return f"{scope}.{hashlib.sha1(normalise_text(text).encode('utf-8')).hexdigest()}"


def scope_of(key: str) -> str:
    """The scope part of a :func:`pattern_key`."""
    return key.partition(".")[0]


@dataclass
class CacheStats:
    """Counters of one cache object. ``hits`` counts every hit, ``near_hits`` the subset
    found by embedding; ``errors`` counts backend failures swallowed."""

    hits: int = 0
    misses: int = 0
    near_hits: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "near_hits": self.near_hits,
                "errors": self.errors}


class PatternCache(ABC):
    """Routing decisions by query text and embedding, per registry version."""

    def __init__(self, *, similarity: float = 0.97, store_answers: bool = False):
        if not 0.0 <= similarity <= 1.0:
            raise ValueError(f"similarity must lie in [0, 1], got {similarity}")
        self.similarity = similarity
        self.store_answers = store_answers
        self._stats = CacheStats()
        self._lock = threading.Lock()  # guards the local nearest-pattern index
        self._index = PatternIndex()

    # -- the contract ---------------------------------------------------------------------
    def lookup(self, text: str, embedding: np.ndarray, version,
               options: RouteOptions) -> Decision | None:
        """The decision stored for ``text`` (or a near-duplicate) under ``version`` and the
        same routing ``options`` (their decision key), marked ``cached=True``; None on a
        miss or when the backend is unavailable."""
        scope = options.decision_key()
        try:
            found = self._find(str(version), scope, pattern_key(scope, text),
                               _vector(embedding))
        except Exception as err:  # noqa: BLE001 - the cache must never fail a request
            self._failed("lookup", err)
            return None
        data, near = found if found else (None, False)
        self._count(hit=data is not None, near=near)
        if data is None:
            return None
        decision = Decision.from_dict(data)
        decision.cached = True
        return decision

    def store(self, text: str, embedding: np.ndarray, version, options: RouteOptions,
              decision: Decision) -> None:
        """Remember ``decision``, made under ``options``, for ``text``. Never raises."""
        data = decision.to_dict()
        data["cached"] = False
        try:
            self._put(str(version), pattern_key(options.decision_key(), text),
                      _vector(embedding), data)
        except Exception as err:  # noqa: BLE001 - the cache must never fail a request
            self._failed("store", err)

    def lookup_answer(self, text: str, version, options: RouteOptions,
                      params: Mapping[str, Any]) -> str | None:
        """The final answer stored for exactly this text, made under the same ``options``
        and sampling ``params`` (None when answers are off)."""
        if not self.store_answers:
            return None
        try:
            return self._get_answer(str(version), pattern_key(options.answer_key(params), text))
        except Exception as err:  # noqa: BLE001 - the cache must never fail a request
            self._failed("lookup_answer", err)
            return None

    def store_answer(self, text: str, version, options: RouteOptions,
                     params: Mapping[str, Any], answer: str) -> None:
        """Remember the final answer made for this text under ``options`` and ``params``
        (no-op when answers are off)."""
        if not self.store_answers:
            return
        try:
            self._put_answer(str(version), pattern_key(options.answer_key(params), text), answer)
        except Exception as err:  # noqa: BLE001 - the cache must never fail a request
            self._failed("store_answer", err)

    def stats(self) -> dict[str, int]:
        """This object's counters: hits, misses, near_hits, errors."""
        return self._stats.as_dict()

    @abstractmethod
    def clear(self) -> None:
        """Forget every pattern and answer (counters stay)."""

    # -- what a backend implements ----------------------------------------------------------
    def _find(self, version: str, scope: str, key: str,
              vector: np.ndarray) -> tuple[dict, bool] | None:
        """Exact hit first, then the nearest pattern of the same scope at or above the
        threshold."""
        data = self._get(version, key)
        if data is not None:
            return data, False
        for near_key, score in self._nearest(version, scope, vector):
            if score < self.similarity:
                break
            data = self._get(version, near_key)
            if data is not None:
                return data, True
            self._forget(version, near_key)  # expired: drop it from the local index
        return None

    @abstractmethod
    def _get(self, version: str, key: str) -> dict | None:
        """The stored decision dict, or None (absent or expired)."""

    @abstractmethod
    def _nearest(self, version: str, scope: str,
                 vector: np.ndarray) -> list[tuple[str, float]]:
        """Stored keys of this version and scope by cosine to ``vector``, best first (a
        few)."""

    def _forget(self, version: str, key: str) -> None:
        """Drop a key that turned out to be gone from the nearest-pattern index."""
        with self._lock:
            self._index.remove(key)

    @abstractmethod
    def _put(self, version: str, key: str, vector: np.ndarray, data: dict) -> None:
        """Store a decision dict with its embedding."""

    @abstractmethod
    def _get_answer(self, version: str, key: str) -> str | None:
        """The stored answer, or None."""

    @abstractmethod
    def _put_answer(self, version: str, key: str, answer: str) -> None:
        """Store an answer."""

    # -- shared bookkeeping -------------------------------------------------------------------
    def _count(self, *, hit: bool, near: bool) -> None:
        if hit:
            self._stats.hits += 1
            self._stats.near_hits += int(near)
        else:
            self._stats.misses += 1

    def _failed(self, operation: str, err: Exception) -> None:
        self._stats.errors += 1
        log.debug("pattern cache %s failed: %r", operation, err)


def _vector(embedding) -> np.ndarray:
    vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if vector.size == 0 or not np.isfinite(vector).all():
        raise ValueError("embedding must be a non-empty finite vector")
    return vector


NEIGHBOURS = 4  # candidates checked per lookup: the nearest may have expired


class PatternIndex:
    """Pattern keys → embeddings, for one registry version at a time. A key's scope is
    the part before its first ``.`` (:func:`routing.cache.base.pattern_key`)."""

    def __init__(self):
        self.version: str | None = None
        self.dim: int | None = None  # set by the first vector
        self._indexes: dict = {}  # scope -> routing.index.VectorIndex
        self._keys: set[str] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def switch(self, version: str) -> bool:
        """Make ``version`` current; True when that emptied the index."""
        if version == self.version:
            return False
        self.version = version
        self._indexes, self._keys = {}, set()
        return True

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        """Index (or re-index) patterns; vectors of another width than the first are
        skipped (another encoder wrote them)."""
        if not keys:
            return
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(keys), -1)
        self.dim = self.dim or vectors.shape[1]
        if vectors.shape[1] != self.dim:
            return
        by_scope: dict[str, dict[str, np.ndarray]] = {}
        for key, vector in zip(keys, vectors, strict=True):  # a repeated key: last one wins
            by_scope.setdefault(_scope(key), {})[key] = vector
        for scope, unique in by_scope.items():
            self._index(scope).add(list(unique), np.stack(list(unique.values())))
            self._keys.update(unique)

    def remove(self, key: str) -> None:
        """Forget one key (no-op when absent)."""
        if key in self:
            self._indexes[_scope(key)].remove([key])
            self._keys.discard(key)

    def nearest(self, vector: np.ndarray, scope: str) -> list[tuple[str, float]]:
        """A few keys of ``scope`` by cosine to ``vector``, best first."""
        index = self._indexes.get(scope)
        if index is None or not len(index) or vector.size != self.dim:
            return []
        ids, sims = index.search(vector.reshape(1, -1), NEIGHBOURS)
        return [(key, float(sim)) for key, sim in zip(ids[0], sims[0], strict=False)]

    def _index(self, scope: str):
        if scope not in self._indexes:
            from routing.index import VectorIndex

            self._indexes[scope] = VectorIndex(self.dim)
        return self._indexes[scope]


def _scope(key: str) -> str:
    return key.partition(".")[0]
