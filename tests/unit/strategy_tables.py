"""A hand-made outcome table where the right routing is known: questions in two tight
clusters (a "math" direction and a "law" direction); ``alpha`` answers the math ones,
``beta`` the law ones, ``gamma`` half-right everywhere (a 0.5 score, never the best)."""

from __future__ import annotations

import numpy as np

from routing.outcomes import OutcomeTable

DIM = 8


def cluster(direction: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros(DIM, dtype=np.float32)
    base[direction] = 1.0
    points = base + 0.15 * rng.standard_normal((n, DIM)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def two_cluster_table(n: int = 20) -> tuple[OutcomeTable, np.ndarray]:
    """(table, embeddings): alpha right on math, beta right on law, gamma 0.5 everywhere."""
    emb = np.concatenate([cluster(0, n, 1), cluster(1, n, 2)])
    alpha = [1.0] * n + [0.0] * n
    beta = [0.0] * n + [1.0] * n
    gamma = [0.5] * (2 * n)
    table = OutcomeTable(
        ids=[f"q{i}" for i in range(2 * n)],
        texts=[f"question {i}" for i in range(2 * n)],
        domains=["math"] * n + ["law"] * n,
        experts=["alpha", "beta", "gamma"],
        scores=np.array([alpha, beta, gamma], dtype=np.float32).T.copy(),
    )
    return table, emb


def newcomer(n: int = 20) -> tuple[OutcomeTable, np.ndarray]:
    """A fourth expert, ``delta``, right on a third cluster of fresh questions."""
    emb = cluster(2, n, 3)
    table = OutcomeTable(
        ids=[f"new{i}" for i in range(n)], texts=[f"new question {i}" for i in range(n)],
        domains=["chemistry"] * n, experts=["delta"],
        scores=np.ones((n, 1), dtype=np.float32),
    )
    return table, emb


def queries() -> tuple[list[str], np.ndarray]:
    """Three queries: one per cluster (math, law, chemistry)."""
    emb = np.concatenate([cluster(0, 1, 10), cluster(1, 1, 11), cluster(2, 1, 12)])
    return ["a math query", "a law query", "a chemistry query"], emb
