"""The routing-strategy contract.

A strategy only *scores*: given queries (texts and their embeddings) it returns one score
per (query, expert), higher is better, plus a per-query explanation. Selection (top-k,
sampling, cost penalty, fallback) lives once, outside the strategies (routing/selection.py).

Profiles are *fitted* from an :class:`~routing.outcomes.OutcomeTable` (validation results)
and the embeddings of its questions. Experts come and go at runtime through
``add_expert`` / ``remove_expert``, without refitting the others.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from routing.outcomes import OutcomeTable


@dataclass
class Scores:
    """``values[i, j]``: query i's score for ``experts[j]``; NaN where the strategy has no
    opinion (the selector then falls back). ``explanations[i]``: why, for query i."""

    experts: list[str]
    values: np.ndarray
    explanations: list[dict]


class RoutingStrategy(ABC):
    """Scores experts for queries. Subclasses set ``name`` and register in
    ``routing.strategies.STRATEGIES``."""

    name: str = ""

    @abstractmethod
    def fit(self, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        """Build every expert's profile from validation outcomes; ``embeddings[i]`` is the
        normalised embedding of ``outcomes.texts[i]``."""

    @abstractmethod
    def score(self, texts: list[str], embeddings: np.ndarray) -> Scores:
        """Score every known expert for each query."""

    @abstractmethod
    def add_expert(self, expert: str, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        """Add (or replace) one expert from its own validation outcomes (a one-column table),
        leaving the other experts' profiles untouched."""

    @abstractmethod
    def remove_expert(self, expert: str) -> None:
        """Forget an expert everywhere (profiles and index vectors)."""

    @property
    @abstractmethod
    def experts(self) -> list[str]:
        """The experts this strategy can score, in column order of :class:`Scores`."""
