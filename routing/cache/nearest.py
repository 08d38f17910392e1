"""The near-duplicate side of the pattern cache: FAISS indexes over the embeddings of the
patterns stored under one registry version, one index per scope (routing options), so a
near hit is only ever a pattern made under the same options.

Only the current version is indexed: when a lookup or store brings a new version, the
old patterns are dead (their experts changed), so the indexes start empty again.
"""

from __future__ import annotations

import numpy as np

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
