"""A FAISS inner-product index with stable string ids, updated in place by id.

Each id owns a *slot*: a row of the vector store kept beside FAISS (so ``vectors``, ``save``
and a rebuild need nothing from FAISS) and its FAISS id. Adds and removes change FAISS in
place (``add_with_ids`` / ``remove_ids``) instead of rebuilding it:

- ``flat`` and ``ivf`` remove ids for real (an IVF keeps the lists it was trained with;
  new rows go to their nearest list);
- ``hnsw`` cannot remove from its graph: a removed slot becomes a *tombstone*, filtered out
  of every search (which asks FAISS for that many more hits) and never reused; the graph is
  rebuilt once tombstones pass a quarter of the live rows.

``kind="auto"`` (the default) picks the kind and its parameters from the size
(:func:`plan_index`). The index is rebuilt, lazily on the next search, only when the plan
for the current size no longer matches the built one (auto crossing to another kind, an IVF
whose size moved past its refit factor) or the tombstones are too many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from routing.errors import RoutingError

KINDS = ("auto", "flat", "ivf", "hnsw")
AUTO_FLAT_ROWS = 50_000  # auto: exact search below this many rows (docs/routing-scale.md)
_POINTS_PER_LIST = 39  # FAISS wants at least 39 training points per IVF list
_TRAIN_PER_LIST = 40  # IVF training sample per list (FAISS asks >= 39): more costs time
_MIN_PROBES, _PROBE_SHARE = 32, 64  # IVF probes: max(32, nlist / 64), the sweep's knee
_REFIT = 2.0  # an IVF is retrained once its size moved by this factor from its training
_TOMBSTONES = 0.25  # hnsw graph rebuilt once tombstones exceed this share of live rows


@dataclass(frozen=True)
class IndexPlan:
    """The FAISS index to build for ``rows`` vectors (``nlist``/``nprobe``: IVF only,
    ``ef_search``: HNSW only)."""

    kind: str
    rows: int
    nlist: int = 0
    nprobe: int = 0
    hnsw_m: int = 32
    ef_search: int = 0

    def suits(self, rows: int, asked: str) -> bool:
        """Whether an index built from this plan still serves ``rows`` rows well."""
        if plan_index(asked, rows, self.hnsw_m).kind != self.kind:
            return False
        return self.kind != "ivf" or self.rows / _REFIT <= rows <= self.rows * _REFIT


def plan_index(kind: str, rows: int, hnsw_m: int = 32) -> IndexPlan:
    """The plan for ``rows`` vectors of ``kind``; ``auto`` is exact below
    :data:`AUTO_FLAT_ROWS` rows and an IVF above: ``nlist = 2·sqrt(rows)`` lists (trained by
    plain k-means, see :meth:`VectorIndex._build`) and ``max(32, nlist/64)`` of them probed:
    top-1 agreement with exact search >= 0.997 from 50k to 1M clustered rows, for the nearest
    row and for the expert a k=100 vote picks, at ~1 ms a query alone at 1M (a fifth of the
    lists cost 11-45 ms for no better agreement; HNSW with M=32 reached 0.97 at efSearch 512
    after a 5-minute build: docs/routing-scale.md)."""
    if kind not in KINDS:
        raise RoutingError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
    if kind == "auto":
        kind = "flat" if rows < AUTO_FLAT_ROWS else "ivf"
    if kind == "ivf" and rows >= 2 * _POINTS_PER_LIST:
        nlist = max(2, min(int(2 * math.sqrt(rows)), rows // _POINTS_PER_LIST))
        nprobe = min(nlist, max(_MIN_PROBES, nlist // _PROBE_SHARE))
        return IndexPlan("ivf", rows, nlist=nlist, nprobe=nprobe)
    if kind == "hnsw":
        return IndexPlan("hnsw", rows, hnsw_m=hnsw_m, ef_search=max(128, 4 * hnsw_m))
    return IndexPlan("flat", rows)  # flat, or an IVF too small to train (exact is cheaper)


class VectorIndex:
    """Inner-product search over unit vectors (so similarity = cosine), ids are strings."""

    def __init__(self, dim: int, kind: str = "auto", hnsw_m: int = 32):
        if kind not in KINDS:
            raise RoutingError(f"unknown index kind {kind!r}; valid: {', '.join(KINDS)}")
        if dim < 1:
            raise RoutingError(f"index dim must be >= 1, got {dim}")
        self.dim, self.kind, self.hnsw_m = dim, kind, hnsw_m
        self._slots: dict[str, int] = {}  # id -> slot, in insertion order
        self._owners = _Blocks(None, object)  # slot -> id (None: free or tombstone)
        self._store = _Blocks(dim, np.float32)  # slot -> vector
        self._top = 0  # slots handed out so far
        self._free: list[int] = []  # slots no one uses, FAISS included
        self._dead: set[int] = set()  # hnsw tombstones: still in the graph, never returned
        self._index = None
        self.plan: IndexPlan | None = None  # what the FAISS index was built as

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def ids(self) -> list[str]:
        """Stored ids, in insertion order."""
        return list(self._slots)

    def vectors(self, ids: list[str]) -> np.ndarray:
        """The stored vectors of ``ids``."""
        self._check_known(ids)
        return self._store[np.array([self._slots[i] for i in ids], dtype=np.int64)]

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        """Insert vectors under ``ids``; an id already present is replaced."""
        vectors = self._check_vectors(vectors, len(ids))
        ids = [str(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise RoutingError("duplicate ids in one add() call")
        self._discard([i for i in ids if i in self._slots])
        slots = self._take(len(ids))
        self._store[slots] = vectors
        self._owners[slots] = np.array(ids, dtype=object)
        self._slots.update(zip(ids, slots.tolist(), strict=True))
        if self._index is not None:
            self._index.add_with_ids(vectors, slots)

    def remove(self, ids: list[str]) -> None:
        """Delete ``ids``; unknown ids raise :class:`RoutingError`."""
        self._check_known(ids)
        self._discard(list(ids))

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
        index = self._faiss()
        sims, slots = index.search(vectors, min(kk + len(self._dead), index.ntotal))
        live = slots >= 0
        if self._dead:
            live &= ~np.isin(slots, np.fromiter(self._dead, np.int64, len(self._dead)))
            order = np.argsort(~live, axis=1, kind="stable")  # live hits first, rank kept
            sims, slots, live = (np.take_along_axis(a, order, axis=1) for a in (sims, slots, live))
        sims, slots, live = sims[:, :kk].astype(np.float32), slots[:, :kk], live[:, :kk]
        sims[~live] = np.nan
        names = self._owners[np.where(live, slots, 0)]
        ids = [row[:count].tolist() for row, count in zip(names, live.sum(axis=1), strict=True)]
        return ids, sims

    def save(self, path: str | Path) -> None:
        """Write ids, vectors and kind to ``path`` (npz)."""
        with open(path, "wb") as handle:
            np.savez(handle, ids=np.array(self.ids, dtype=str),
                     vectors=self._store[np.fromiter(self._slots.values(), np.int64)],
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

    def _take(self, count: int) -> np.ndarray:
        """``count`` unused slots: freed ones first, then new ones."""
        reused = [self._free.pop() for _ in range(min(count, len(self._free)))]
        fresh = count - len(reused)
        self._top += fresh
        self._store.ensure(self._top)
        self._owners.ensure(self._top)
        return np.array(reused + list(range(self._top - fresh, self._top)), dtype=np.int64)

    def _discard(self, ids: list[str]) -> None:
        if not ids:
            return
        slots = [self._slots.pop(i) for i in ids]
        self._owners[np.array(slots, dtype=np.int64)] = np.full(len(slots), None, dtype=object)
        if self._index is None:
            self._free.extend(slots)
        elif self.plan.kind == "hnsw":
            self._dead.update(slots)
        else:
            self._index.remove_ids(_selector(self.plan.kind, np.array(slots, dtype=np.int64)))
            self._free.extend(slots)

    def _faiss(self):
        rows = len(self)
        if (self._index is None or not self.plan.suits(rows, self.kind)
                or len(self._dead) > _TOMBSTONES * rows):
            self._index, self.plan = self._build(plan_index(self.kind, rows, self.hnsw_m))
        return self._index

    def _build(self, plan: IndexPlan):
        import faiss

        self._free.extend(self._dead)
        self._dead = set()
        slots = np.fromiter(self._slots.values(), np.int64, len(self._slots))
        if plan.kind == "ivf":
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(self.dim), self.dim, plan.nlist, faiss.METRIC_INNER_PRODUCT
            )
            # FAISS trains an inner-product IVF by spherical k-means (unit centroids): at 1M
            # rows with as many lists as the data has clusters it split them, and a fifth of
            # the lists reached only 0.990 agreement. Plain k-means centroids (means, shorter
            # for spread-out lists) gave 0.996 at 8 probes (docs/routing-scale.md).
            index.cp.spherical = False
            sample = np.random.default_rng(0).permutation(len(slots))[
                : _TRAIN_PER_LIST * plan.nlist]
            index.train(self._store[slots[np.sort(sample)]])
            index.nprobe = plan.nprobe
            index.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids by id, O(1)
        elif plan.kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, plan.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efSearch = plan.ef_search
            index = faiss.IndexIDMap2(base)
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        for start in range(0, len(slots), _Blocks.ROWS):  # no second copy of the store
            part = slots[start: start + _Blocks.ROWS]
            index.add_with_ids(self._store[part], part)
        return index, plan

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
        unknown = [i for i in ids if i not in self._slots]
        if unknown:
            raise RoutingError(f"unknown index id(s) {unknown[:5]}")


class _Blocks:
    """Rows by slot in fixed-size blocks, so growing never copies what is stored (a
    doubling array copies all of it now and then: 1.5 GB at 1M rows of 384 floats)."""

    ROWS = 1 << 16

    def __init__(self, width: int | None, dtype):
        self.shape = () if width is None else (width,)
        self.dtype, self.blocks = dtype, []

    def ensure(self, rows: int) -> None:
        """Room for slots ``0 .. rows - 1``."""
        while len(self.blocks) * self.ROWS < rows:
            self.blocks.append(np.empty((self.ROWS, *self.shape), dtype=self.dtype))

    def __getitem__(self, slots: np.ndarray) -> np.ndarray:
        out = np.empty((slots.size, *self.shape), dtype=self.dtype)
        for block, rows, offsets in self._split(slots.ravel()):
            out[rows] = self.blocks[block][offsets]
        return out.reshape(*slots.shape, *self.shape)

    def __setitem__(self, slots: np.ndarray, values: np.ndarray) -> None:
        for block, rows, offsets in self._split(slots):
            self.blocks[block][offsets] = values[rows]

    def _split(self, slots: np.ndarray):
        block_of, offsets = np.divmod(slots, self.ROWS)
        for block in np.unique(block_of):
            rows = np.flatnonzero(block_of == block)
            yield block, rows, offsets[rows]


def _selector(kind: str, slots: np.ndarray):
    """What ``remove_ids`` takes: an IVF with a hashtable direct map removes only an id
    array (by lookup); the id map over a flat or HNSW index is scanned once against a set."""
    import faiss

    if kind == "ivf":
        selector = faiss.IDSelectorArray(len(slots), faiss.swig_ptr(slots))
    else:
        selector = faiss.IDSelectorBatch(len(slots), faiss.swig_ptr(slots))
    selector.slots = slots  # the selector reads this memory: keep it alive as long
    return selector
