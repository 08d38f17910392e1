"""The near-duplicate side of the pattern cache: a FAISS index over the embeddings of the
patterns stored under one registry version.

Only the current version is indexed: when a lookup or store brings a new version, the
old patterns are dead (their experts changed), so the index starts empty again.
"""

from __future__ import annotations

import numpy as np

NEIGHBOURS = 4  # candidates checked per lookup: the nearest may have expired


class PatternIndex:
    """Pattern keys → embeddings, for one registry version at a time."""

    def __init__(self):
        self.version: str | None = None
        self._index = None  # routing.index.VectorIndex, created with the first vector's dim
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
        self._index = None
        self._keys = set()
        return True

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        """Index (or re-index) patterns; vectors of another width than the first are
        skipped (another encoder wrote them)."""
        if not keys:
            return
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(keys), -1)
        if self._index is None:
            from routing.index import VectorIndex

            self._index = VectorIndex(vectors.shape[1])
        if vectors.shape[1] != self._index.dim:
            return
        unique = dict(zip(keys, vectors, strict=True))  # last vector of a repeated key wins
        self._index.add(list(unique), np.stack(list(unique.values())))
        self._keys.update(unique)

    def remove(self, key: str) -> None:
        """Forget one key (no-op when absent)."""
        if key in self:
            self._index.remove([key])
            self._keys.discard(key)

    def nearest(self, vector: np.ndarray) -> list[tuple[str, float]]:
        """A few stored keys by cosine to ``vector``, best first."""
        if not len(self) or vector.size != self._index.dim:
            return []
        ids, sims = self._index.search(vector.reshape(1, -1), NEIGHBOURS)
        return [(key, float(sim)) for key, sim in zip(ids[0], sims[0], strict=False)]
