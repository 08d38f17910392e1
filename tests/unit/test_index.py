"""VectorIndex: stable string ids, add/remove with no stale vector, save/load; every kind."""

from __future__ import annotations

import numpy as np
import pytest

from routing.errors import RoutingError
from routing.index import KINDS, VectorIndex


def _unit(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(params=KINDS)
def filled(request) -> tuple[VectorIndex, np.ndarray]:
    vectors = _unit(200)
    index = VectorIndex(16, kind=request.param)
    index.add([f"v{i}" for i in range(200)], vectors)
    return index, vectors


def test_search_finds_each_vector_first(filled):
    index, vectors = filled
    ids, sims = index.search(vectors[:5], 3)
    assert [row[0] for row in ids] == [f"v{i}" for i in range(5)]
    assert sims.shape == (5, 3) and np.allclose(sims[:, 0], 1.0, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # best first


def test_remove_leaves_no_stale_vector(filled):
    index, vectors = filled
    index.remove(["v0", "v1"])
    assert len(index) == 198 and index._faiss().ntotal == 198
    ids, _ = index.search(vectors[:2], 198)
    assert not {"v0", "v1"} & {i for row in ids for i in row}
    with pytest.raises(RoutingError, match="unknown index id"):
        index.remove(["v0"])


def test_re_adding_an_id_replaces_its_vector(filled):
    index, vectors = filled
    index.add(["v3"], vectors[7])
    assert len(index) == 200
    ids, sims = index.search(vectors[7:8], 2)
    assert set(ids[0]) == {"v3", "v7"} and np.allclose(sims[0], 1.0, atol=1e-5)


def test_save_and_load_round_trip(filled, tmp_path):
    index, vectors = filled
    index.remove(["v5"])
    index.save(tmp_path / "index.npz")
    loaded = VectorIndex.load(tmp_path / "index.npz")
    assert loaded.kind == index.kind and len(loaded) == 199
    assert loaded.search(vectors[6:7], 1)[0] == [["v6"]]


def test_small_and_empty_indexes():
    index = VectorIndex(4)
    ids, sims = index.search(np.eye(1, 4), 3)
    assert ids == [[]] and sims.shape == (1, 0)
    index.add(["a", "b"], np.eye(2, 4))
    ids, sims = index.search(np.eye(1, 4), 5)
    assert ids == [["a", "b"]] and sims.shape == (1, 2)


def test_bad_input_is_named():
    index = VectorIndex(4)
    with pytest.raises(RoutingError, match="shape"):
        index.add(["a"], np.ones((1, 5)))
    with pytest.raises(RoutingError, match="2 ids but 1"):
        index.add(["a", "b"], np.ones((1, 4)))
    with pytest.raises(RoutingError, match="NaN"):
        index.add(["a"], np.full((1, 4), np.nan))
    with pytest.raises(RoutingError, match="index kind"):
        VectorIndex(4, kind="annoy")
