"""VectorIndex: stable string ids, add/remove with no stale vector, save/load; every kind."""

from __future__ import annotations

import numpy as np
import pytest

from routing.errors import RoutingError
from routing.index import AUTO_FLAT_ROWS, KINDS, VectorIndex, plan_index
from tests.bench_scripts import load_bench


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
    assert len(index) == 198
    ids, sims = index.search(vectors[:2], 200)  # hnsw keeps them as tombstones: never returned
    assert not {"v0", "v1"} & {i for row in ids for i in row}
    if index.plan.kind != "ivf":  # an IVF only sees the lists it probes
        assert [len(row) for row in ids] == [198, 198] and sims.shape == (2, 198)
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


# Size-fitted kinds (auto) and updates in place (docs/routing-scale.md)


def test_auto_picks_exact_when_small_and_approximate_when_large():
    assert plan_index("auto", 1_000).kind == "flat"
    large = plan_index("auto", 1_000_000)
    assert large.kind in ("ivf", "hnsw") and 500 <= large.nlist <= 4_000
    assert large.nprobe < large.nlist
    index = VectorIndex(16)
    index.add([f"v{i}" for i in range(100)], _unit(100))
    index.search(_unit(1), 1)
    assert index.kind == "auto" and index.plan.kind == "flat"
    with pytest.raises(RoutingError, match="index kind"):
        plan_index("annoy", 10)


def test_auto_moves_to_an_approximate_index_as_the_index_grows():
    index = VectorIndex(16)
    index.add([f"v{i}" for i in range(1_000)], _unit(1_000))
    index.search(_unit(1), 1)
    assert index.plan.kind == "flat"
    more = _unit(AUTO_FLAT_ROWS, seed=1)
    index.add([f"w{i}" for i in range(len(more))], more)
    ids, _ = index.search(more[:3], 1)
    assert index.plan.kind != "flat" and ids == [["w0"], ["w1"], ["w2"]]


def _churned(kind: str) -> tuple[VectorIndex, object]:
    """An index searched once (FAISS built), then added to, removed from and re-added to;
    with the FAISS object it had after the first search."""
    vectors = _unit(3_000, dim=32)
    index = VectorIndex(32, kind=kind)
    index.add([f"v{i}" for i in range(2_000)], vectors[:2_000])
    index.search(vectors[:1], 1)
    built = index._index
    index.add([f"v{i}" for i in range(2_000, 3_000)], vectors[2_000:])
    index.remove([f"v{i}" for i in range(0, 3_000, 3)])
    index.add(["v3", "v6"], _unit(2, dim=32, seed=9))  # back, in freed slots, new vectors
    return index, built


def test_updates_in_place_match_a_fresh_build():
    index, built = _churned("flat")
    fresh = VectorIndex(32, kind="flat")
    fresh.add(index.ids, index.vectors(index.ids))
    queries = _unit(50, dim=32, seed=5)
    got, want = index.search(queries, 10), fresh.search(queries, 10)
    assert index._index is built  # updated, not rebuilt
    assert got[0] == want[0] and np.allclose(got[1], want[1], atol=1e-6)
    assert index.ids == fresh.ids and len(index) == 2_002 and index._index.ntotal == 2_002


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_removal_really_removes(kind):
    index, built = _churned(kind)
    assert index._index is built
    vectors = _unit(3_000, dim=32)
    gone = [f"v{i}" for i in range(9, 3_000, 3)]
    ids, sims = index.search(vectors[9:3_000:3], 5)
    assert not set(gone) & {i for row in ids for i in row}
    assert index.search(_unit(2, dim=32, seed=9), 1)[0] == [["v3"], ["v6"]]
    live = index._index.ntotal - len(index._dead)
    assert live == len(index) == 2_002


def test_hnsw_tombstones_are_dropped_by_a_rebuild():
    index, _ = _churned("hnsw")
    assert index._dead  # removed while built: kept in the graph, filtered out
    index.remove(index.ids[:600])  # tombstones now exceed a quarter of the live rows
    index.search(_unit(1, dim=32), 1)
    assert not index._dead and index._index.ntotal == len(index) == 1_402


def test_ivf_with_fitted_parameters_agrees_with_exact_search():
    vectors, _ = load_bench("routing_scale").clustered(31_000, seed=3)
    stored, queries = vectors[:30_000], vectors[30_000:]
    ids = [f"v{i}" for i in range(len(stored))]
    exact, approximate = VectorIndex(384, kind="flat"), VectorIndex(384, kind="ivf")
    for index in (exact, approximate):
        index.add(ids, stored)
    want, got = exact.search(queries, 1)[0], approximate.search(queries, 1)[0]
    assert approximate.plan.kind == "ivf"
    assert np.mean([a == b for a, b in zip(got, want, strict=True)]) >= 0.99



def test_auto_probes_few_lists_at_1m_rows():
    """The 1M sweep (docs/routing-scale.md): 32 of 2,000 lists keep top-1 agreement >= 0.997
    at ~1 ms a query alone, where a fifth of the lists (400) cost 11-45 ms."""
    plan = plan_index("auto", 1_000_000)
    assert (plan.kind, plan.nlist, plan.nprobe) == ("ivf", 2_000, 32)
    assert plan_index("auto", AUTO_FLAT_ROWS).nprobe == 32  # a floor while lists are few
    assert plan_index("auto", 10_000_000).nprobe == 6_324 // 64


def test_ivf_lists_are_trained_by_plain_k_means():
    """Plain k-means centroids (means of unit vectors: shorter than 1), not FAISS's default
    spherical ones for inner product, which split the clusters at 1M rows when the lists
    were as many as the clusters (0.990 agreement at 400 probes against 0.996 at 8)."""
    vectors, _ = load_bench("routing_scale").clustered(5_000, seed=4, clusters=20)
    index = VectorIndex(384, kind="ivf")
    index.add([f"v{i}" for i in range(len(vectors))], vectors)
    index.search(vectors[:1], 1)
    norms = np.linalg.norm(index._index.quantizer.reconstruct_n(0, index.plan.nlist), axis=1)
    assert index.plan.kind == "ivf" and norms.max() < 0.99


def test_ivf_updates_in_place_with_the_new_plan():
    """Adds and removes after the build go into the trained lists; nothing is rebuilt."""
    vectors, _ = load_bench("routing_scale").clustered(9_000, seed=5, clusters=30)
    index = VectorIndex(384, kind="ivf")
    index.add([f"v{i}" for i in range(6_000)], vectors[:6_000])
    index.search(vectors[:1], 1)
    built, plan = index._index, index.plan
    index.add([f"v{i}" for i in range(6_000, 9_000)], vectors[6_000:])
    index.remove([f"v{i}" for i in range(0, 9_000, 2)])
    ids, _ = index.search(vectors[1:9_000:2][:200], 1)
    assert index._index is built and index.plan == plan and index._index.ntotal == 4_500
    assert ids == [[f"v{i}"] for i in range(1, 400, 2)]
