"""Pilots (RouterRetriever, Lee et al. 2024): each validation question is labelled with its
best expert(s); per (domain, expert) group the *pilot* is the mean embedding of the group's
questions. A query's score for an expert is its mean cosine to that expert's pilots
(``mode="mean"``, the paper's rule) or to the nearest one (``mode="max"``).

Pilots live in a :class:`~routing.index.VectorIndex` under ids ``expert::domain``; adding an
expert computes its pilots from its own outcomes (it is "best" where it matches or beats the
best score already on file), removing one deletes its vectors.

A question solved by many experts says little about any one of them, so each question
counts ``1 / (number of best experts)`` in the group mean (``share_ties=True``).

``mode="soft"`` (ours, not the paper's): both rules above ignore how many questions a pilot
stands for, so an expert that wins three questions of a domain scores like one that wins
three hundred. Soft mode treats pilots as a kernel density: each pilot weighs
``support · exp(cos / temperature)`` and an expert's score is its share of the total weight
(an estimate of P(expert is best | query)).
"""

from __future__ import annotations

import numpy as np

from routing.errors import RoutingError
from routing.index import VectorIndex
from routing.outcomes import OutcomeTable
from routing.strategies.base import RoutingStrategy, Scores, check_fit_inputs, check_queries

_SEP = "::"


class PilotStrategy(RoutingStrategy):
    """Similarity of the query to each expert's pilot embeddings."""

    name = "pilots"
    param_grid = {"mode": ["mean", "max", "soft"], "share_ties": [True, False]}

    def __init__(self, mode: str = "mean", share_ties: bool = True, min_support: int = 3,
                 temperature: float = 0.05, explain: int = 3):
        if mode not in ("mean", "max", "soft"):
            raise RoutingError(f"pilots: mode must be 'mean', 'max' or 'soft', got {mode!r}")
        if temperature <= 0:
            raise RoutingError("pilots: temperature must be > 0")
        self.mode, self.share_ties, self.temperature = mode, share_ties, temperature
        self.min_support, self.explain = min_support, explain
        self._experts: list[str] = []
        self._pilots: dict[str, list[str]] = {}  # expert -> its pilot ids
        self._support: dict[str, float] = {}  # pilot id -> question mass behind it
        self._best: dict[str, float] = {}  # question id -> best score on file
        self._index: VectorIndex | None = None
        self._matrix: tuple[list[str], np.ndarray] | None = None  # see _ordered

    def fit(self, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        check_fit_inputs(outcomes, embeddings)
        self._experts, self._pilots = [], {}
        self._index = _pilot_index(embeddings.shape[1])
        scores = np.nan_to_num(outcomes.scores, nan=-1.0)
        best = scores.max(axis=1)
        self._best = dict(zip(outcomes.ids, best.tolist(), strict=True))
        winners = (scores >= best[:, None]) & (best[:, None] > 0)
        share = 1.0 / np.maximum(winners.sum(axis=1), 1) if self.share_ties else np.ones(len(best))
        for j, expert in enumerate(outcomes.experts):
            self._store(expert, outcomes.domains, embeddings, winners[:, j] * share)

    def add_expert(self, expert: str, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        check_fit_inputs(outcomes, embeddings, one_expert=expert)
        if self._index is None:
            self._index = _pilot_index(embeddings.shape[1])
        if expert in self._experts:
            self.remove_expert(expert)
        own = np.nan_to_num(outcomes.with_experts([expert]).scores[:, 0], nan=-1.0)
        on_file = np.array([self._best.get(qid, 0.0) for qid in outcomes.ids])
        wins = (own >= on_file) & (own > 0)
        self._store(expert, outcomes.domains, embeddings, wins.astype(np.float64))

    def remove_expert(self, expert: str) -> None:
        if expert not in self._experts:
            raise RoutingError(f"pilots: unknown expert {expert!r}; known: {self._experts}")
        pilots = self._pilots.pop(expert)
        self._matrix = None
        for pilot in pilots:
            del self._support[pilot]
        if pilots:
            self._index.remove(pilots)
        self._experts.remove(expert)

    def score(self, texts: list[str], embeddings: np.ndarray) -> Scores:
        check_queries(texts, embeddings, bool(self._experts), "pilots")
        values = np.full((len(texts), len(self._experts)), np.nan, dtype=np.float32)
        if not len(self._index):
            return Scores(self.experts, values, [{"pilots": []} for _ in texts])
        pilots, matrix = self._ordered()
        grid = np.asarray(embeddings, dtype=np.float32) @ matrix.T  # cosine to every pilot
        values[:] = self._aggregate(grid)
        shown = min(self.explain, len(pilots))
        top = np.argpartition(-grid, shown - 1, axis=1)[:, :shown] if shown else grid[:, :0]
        explanations = [
            {"pilots": [{"pilot": pilots[j], "similarity": float(row[j])}
                        for j in sorted(best, key=lambda j, row=row: -row[j])]}
            for row, best in zip(grid, top, strict=True)
        ]
        return Scores(self.experts, values, explanations)

    def _ordered(self) -> tuple[list[str], np.ndarray]:
        # Every pilot grouped by expert, and their vectors: scoring reads all of them, so
        # one matrix product beats a k=all index search (kept until the pilots change).
        if self._matrix is None:
            pilots = [p for e in self._experts for p in self._pilots[e]]
            self._matrix = (pilots, self._index.vectors(pilots))
        return self._matrix

    def _aggregate(self, grid: np.ndarray) -> np.ndarray:
        """Per-expert scores from the similarity to every pilot (columns in pilot order)."""
        pilots = self._ordered()[0]
        counts = np.array([len(self._pilots[e]) for e in self._experts])
        out = np.full((len(grid), len(self._experts)), np.nan, dtype=np.float32)
        owned = counts > 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[owned]
        filled = grid
        if self.mode == "mean":
            out[:, owned] = np.add.reduceat(filled, starts, axis=1) / counts[owned]
        elif self.mode == "max":
            out[:, owned] = np.maximum.reduceat(filled, starts, axis=1)
        else:
            support = np.array([self._support[p] for p in pilots])
            mass = np.exp((filled - filled.max(axis=1, keepdims=True)) / self.temperature)
            mass *= support[None, :]
            out[:, owned] = np.add.reduceat(mass, starts, axis=1) / mass.sum(axis=1, keepdims=True)
        return out

    def _store(self, expert: str, domains: list[str], embeddings: np.ndarray,
               weight: np.ndarray) -> None:
        if _SEP in expert:
            raise RoutingError(f"pilots: expert names may not contain {_SEP!r}: {expert!r}")
        labels = np.asarray(domains, dtype=object)
        ids, vectors = [], []
        for domain in sorted(set(domains)):
            group = (labels == domain) & (weight > 0)
            if group.sum() >= self.min_support:
                ids.append(f"{expert}{_SEP}{domain}")
                vectors.append(weight[group] @ embeddings[group])
                self._support[ids[-1]] = float(weight[group].sum())
        if ids:
            from routing.encoder import normalise  # here: encoder imports this package

            self._index.add(ids, normalise(np.stack(vectors)))
        self._experts.append(expert)
        self._pilots[expert] = ids
        self._matrix = None


def _pilot_index(dim: int) -> VectorIndex:
    # Exact: a score reads the similarity to every pilot, which an approximate index
    # (auto's pick at size) would drop for the lists or graph nodes it does not visit.
    return VectorIndex(dim, kind="flat")
