"""kNN: the k validation questions nearest to the query (FAISS), and how each expert did on
them, similarity weighted. The standard strong baseline.

An expert's score is a calibrated estimate of its chance to answer the query well:

    p = (Σ_i w_i·y_i + β·prior) / (Σ_i w_i + β),   w_i = softmax(sim_i / temperature)

over the neighbours ``i`` where the expert has a result, with ``prior`` its mean validation
score and ``β`` (``prior_weight``) its weight against the whole neighbourhood (whose weights
sum to 1), so a thin or missing neighbourhood falls back to the expert's overall level.

``index_kind`` picks the FAISS index; ``auto`` (the default) fits it to the number of
stored questions: exact while small, approximate past ~50k (routing/index.py,
docs/routing-scale.md).
"""

from __future__ import annotations

import numpy as np

from routing.errors import RoutingError
from routing.index import KINDS, VectorIndex
from routing.outcomes import OutcomeTable
from routing.strategies.base import (
    RoutingStrategy,
    Scores,
    check_fit_inputs,
    check_queries,
    column_means,
)


class KNNStrategy(RoutingStrategy):
    """Distance-weighted mean outcome of the ``k`` nearest validation questions."""

    name = "knn"
    param_grid = {"k": [50, 100, 200], "temperature": [0.05, 0.2, 1.0],
                  "prior_weight": [0.0, 0.2]}

    def __init__(self, k: int = 100, temperature: float = 0.2, prior_weight: float = 0.0,
                 explain: int = 5, index_kind: str = "auto"):
        if k < 1 or temperature <= 0 or prior_weight < 0:
            raise RoutingError("knn needs k >= 1, temperature > 0, prior_weight >= 0")
        if index_kind not in KINDS:
            raise RoutingError(f"knn: unknown index_kind {index_kind!r}; valid: {KINDS}")
        self.k, self.temperature, self.prior_weight = k, temperature, prior_weight
        self.explain, self.index_kind = explain, index_kind
        self._experts: list[str] = []
        self._rows: dict[str, int] = {}  # question id -> row of _outcomes
        self._questions: list[str] = []  # row of _outcomes -> question id
        self._outcomes = np.zeros((0, 0), dtype=np.float32)
        self._prior: np.ndarray | None = None  # column_means(_outcomes), None: stale
        self._index: VectorIndex | None = None

    def fit(self, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        check_fit_inputs(outcomes, embeddings)
        self._experts = list(outcomes.experts)
        self._rows, self._questions = {}, []
        self._outcomes = np.zeros((0, len(self._experts)), dtype=np.float32)
        self._index = VectorIndex(embeddings.shape[1], kind=self.index_kind)
        self._insert(outcomes, embeddings, list(range(len(self._experts))))

    def add_expert(self, expert: str, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        check_fit_inputs(outcomes, embeddings, one_expert=expert)
        if self._index is None:
            self.fit(outcomes.with_experts([expert]), embeddings)
            return
        if expert not in self._experts:
            self._experts.append(expert)
            pad = np.full((len(self._outcomes), 1), np.nan, dtype=np.float32)
            self._outcomes = np.concatenate([self._outcomes, pad], axis=1)
        column = self._experts.index(expert)
        self._outcomes[:, column] = np.nan
        self._insert(outcomes.with_experts([expert]), embeddings, [column])
        self._drop_unused()

    def remove_expert(self, expert: str) -> None:
        if expert not in self._experts:
            raise RoutingError(f"knn: unknown expert {expert!r}; known: {self._experts}")
        column = self._experts.index(expert)
        del self._experts[column]
        self._outcomes = np.delete(self._outcomes, column, axis=1)
        self._prior = None
        self._drop_unused()

    def score(self, texts: list[str], embeddings: np.ndarray) -> Scores:
        check_queries(texts, embeddings, self._index is not None and len(self._index) > 0, "knn")
        ids, sims = self._index.search(embeddings, self.k)
        found = ~np.isnan(sims)  # an approximate index may find fewer than k for a query
        rows = np.zeros(sims.shape, dtype=int)
        rows[found] = [self._rows[q] for hit in ids for q in hit]
        neighbours = self._outcomes[rows]
        neighbours[~found] = np.nan
        values = self.estimate(np.where(found, sims, -np.inf), neighbours)
        explanations = [
            {"neighbours": [{"id": q, "similarity": float(s)}
                            for q, s in zip(hit[: self.explain], sim[: self.explain], strict=False)]}
            for hit, sim in zip(ids, sims, strict=True)
        ]
        return Scores(experts=self.experts, values=values, explanations=explanations)

    def estimate(self, sims: np.ndarray, neighbour_outcomes: np.ndarray) -> np.ndarray:
        """Scores from neighbour similarities (n, k) and their outcomes (n, k, experts)."""
        logits = (sims - sims.max(axis=1, keepdims=True)) / self.temperature
        weights = np.exp(logits)
        weights /= weights.sum(axis=1, keepdims=True)
        known = ~np.isnan(neighbour_outcomes)
        mass = np.einsum("nk,nkm->nm", weights, known.astype(np.float64))
        total = np.einsum("nk,nkm->nm", weights, np.nan_to_num(neighbour_outcomes, nan=0.0))
        if self._prior is None:  # a pass over every stored question: 35 ms at 1M rows
            self._prior = column_means(self._outcomes)
        prior = self._prior[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = (total + self.prior_weight * prior) / (mass + self.prior_weight)
        return values.astype(np.float32)

    def _insert(self, outcomes: OutcomeTable, embeddings: np.ndarray, columns: list[int]) -> None:
        new = [i for i, qid in enumerate(outcomes.ids) if qid not in self._rows]
        if new:
            start = len(self._outcomes)
            self._rows.update({outcomes.ids[i]: start + n for n, i in enumerate(new)})
            self._questions.extend(outcomes.ids[i] for i in new)
            pad = np.full((len(new), len(self._experts)), np.nan, dtype=np.float32)
            self._outcomes = np.concatenate([self._outcomes, pad])
            self._index.add([outcomes.ids[i] for i in new], embeddings[new])
        rows = [self._rows[qid] for qid in outcomes.ids]
        self._outcomes[np.ix_(rows, columns)] = outcomes.scores
        self._prior = None

    def _drop_unused(self) -> None:
        # A question no remaining expert has a result for carries no signal: drop its vector.
        empty = np.isnan(self._outcomes).all(axis=1) if self._experts else (
            np.ones(len(self._outcomes), dtype=bool))
        if not empty.any():
            return
        self._index.remove([self._questions[r] for r in np.flatnonzero(empty)])
        keep = np.flatnonzero(~empty)
        self._outcomes = self._outcomes[keep]
        self._prior = None
        self._questions = [self._questions[r] for r in keep]
        self._rows = {q: n for n, q in enumerate(self._questions)}
