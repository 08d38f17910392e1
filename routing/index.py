"""A FAISS inner-product index with stable string ids, add and remove by id.

Vectors are kept beside the FAISS index, so an index kind that cannot remove ids well
(HNSW, and IVF whose lists would drift from the data) is rebuilt from them on remove, and
``save``/``load`` are a plain ``.npz`` (no FAISS file format to version).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from routing.errors import RoutingError

KINDS = ("flat", "ivf", "hnsw")
_POINTS_PER_LIST = 39  # FAISS wants at least 39 training points per IVF list


class VectorIndex:
    """Inner-product search over unit vectors (so similarity = cosine), ids are strings."""

    def __init__(self, dim: int, kind: str = "flat", hnsw_m: int = 32):
        if kind not in KINDS:
            raise RoutingError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
        if dim < 1:
            raise RoutingError(f"index dim must be >= 1, got {dim}")
        self.dim, self.kind, self.hnsw_m = dim, kind, hnsw_m
        self._ids: list[str] = []  # row -> id
        self._rows: dict[str, int] = {}  # id -> row
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._index = None

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        """Stored ids, in insertion order."""
        return list(self._ids)

    def vectors(self, ids: list[str]) -> np.ndarray:
        """The stored vectors of ``ids``."""
        self._check_known(ids)
        return self._vectors[[self._rows[i] for i in ids]]

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        """Insert vectors under ``ids``; an id already present is replaced."""
        vectors = self._check_vectors(vectors, len(ids))
        if len(set(ids)) != len(ids):
            raise RoutingError("duplicate ids in one add() call")
        present = [i for i in ids if i in self._rows]
        if present:
            self._drop_rows(present)
        start = len(self._ids)
        self._ids.extend(str(i) for i in ids)
        self._rows.update({str(i): start + n for n, i in enumerate(ids)})
        self._vectors = np.concatenate([self._vectors, vectors])
        if self.kind == "flat" and self._index is not None and not present:
            self._index.add_with_ids(vectors, np.arange(start, start + len(ids), dtype=np.int64))
        else:
            self._index = None  # rebuilt lazily on the next search

    def remove(self, ids: list[str]) -> None:
        """Delete ``ids``; unknown ids raise :class:`RoutingError`."""
        self._check_known(ids)
        self._drop_rows(list(ids))
        self._index = None

    def search(self, vectors: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` most similar stored ids per query row, best first.

        Returns ``(ids, sims)``: ``sims`` has shape ``(n, min(k, len(self)))``; ``ids[i][j]``
        goes with ``sims[i, j]``. An approximate index may return fewer hits for a row:
        its list is shorter and the unused ``sims`` cells are NaN.
        """
        vectors = self._check_vectors(vectors, None)
        if k < 1:
            raise RoutingError(f"k must be >= 1, got {k}")
        kk = min(k, len(self))
        if kk == 0:
            return [[] for _ in range(len(vectors))], np.zeros((len(vectors), 0), np.float32)
        sims, rows = self._faiss().search(vectors, kk)
        sims = sims.astype(np.float32)
        sims[rows < 0] = np.nan
        ids = [[self._ids[r] for r in row if r >= 0] for row in rows]
        return ids, sims

    def save(self, path: str | Path) -> None:
        """Write ids, vectors and kind to ``path`` (npz)."""
        with open(path, "wb") as handle:
            np.savez(handle, ids=np.array(self._ids, dtype=str), vectors=self._vectors,
                     meta=np.array([self.kind, str(self.dim), str(self.hnsw_m)]))

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        """An index read back from :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            kind, dim, hnsw_m = (str(x) for x in data["meta"])
            index = cls(int(dim), kind=kind, hnsw_m=int(hnsw_m))
            if len(data["ids"]):
                index.add([str(i) for i in data["ids"]], data["vectors"])
        return index

    # internals

    def _drop_rows(self, ids: list[str]) -> None:
        drop = {self._rows[i] for i in ids}
        keep = [r for r in range(len(self._ids)) if r not in drop]
        self._vectors = self._vectors[keep]
        self._ids = [self._ids[r] for r in keep]
        self._rows = {i: n for n, i in enumerate(self._ids)}
        self._index = None

    def _faiss(self):
        if self._index is None:
            self._index = self._build()
        return self._index

    def _build(self):
        import faiss

        n = len(self._ids)
        if self.kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efSearch = max(64, 2 * self.hnsw_m)
        elif self.kind == "ivf" and n >= 2 * _POINTS_PER_LIST:
            nlist = min(int(math.sqrt(n)), n // _POINTS_PER_LIST)
            base = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT
            )
            base.train(self._vectors)
            base.nprobe = min(nlist, max(8, nlist // 4))
        else:  # flat, or an IVF too small to train (exact search is cheaper anyway)
            base = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIDMap2(base)
        if n:
            index.add_with_ids(self._vectors, np.arange(n, dtype=np.int64))
        return index

    def _check_vectors(self, vectors: np.ndarray, rows: int | None) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise RoutingError(f"vectors must have shape (n, {self.dim}), got {vectors.shape}")
        if rows is not None and len(vectors) != rows:
            raise RoutingError(f"{rows} ids but {len(vectors)} vectors")
        if not np.isfinite(vectors).all():
            raise RoutingError("vectors contain NaN or inf")
        return vectors

    def _check_known(self, ids: list[str]) -> None:
        unknown = [i for i in ids if i not in self._rows]
        if unknown:
            raise RoutingError(f"unknown index id(s) {unknown[:5]}")
