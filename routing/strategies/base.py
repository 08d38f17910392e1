"""The routing-strategy contract.

A strategy only *scores*: given queries (texts and their embeddings) it returns one score
per (query, expert), higher is better, plus a per-query explanation. Selection (top-k,
sampling, cost penalty, fallback) lives once, outside the strategies (routing/selection.py).

Profiles are *fitted* from an :class:`~routing.outcomes.OutcomeTable` (validation results)
and the embeddings of its questions. Experts come and go at runtime through
``add_expert`` / ``remove_expert``, without refitting the others.

Writing one (``tests/unit/test_strategy_contract.py`` runs every registered strategy
through the same checks):

1. Subclass :class:`RoutingStrategy` in ``routing/strategies/<name>.py``; set ``name``.
2. Set ``needs`` to what the router must hand the constructor, a tuple of
   :class:`StrategyContext` field names (``"encoder"``: the sentence encoder, for
   strategies that embed text of their own; ``"instructions"``: expert id → task
   instruction). They arrive as keyword arguments of those names.
3. Every other constructor argument is an *option*, with a default: the config sets it
   under ``routing.strategies.<name>`` (validated when the config loads, by building the
   strategy), the offline evaluation tunes it through ``param_grid`` (option → values).
   Raise :class:`~routing.errors.RoutingError` for a bad value.
4. Implement ``fit``, ``score``, ``add_expert``, ``remove_expert`` and ``experts``; raise
   :class:`~routing.errors.RoutingError` (not an assertion, not a default) on bad input:
   an empty query, scoring before any expert is known, mismatched embeddings.
5. Register it with one line in ``routing.strategies._PATHS`` (``name: "module:Class"``).

The input checks and small profile helpers every strategy shares (:func:`check_queries`,
:func:`column_means`) live here too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from routing.errors import RoutingError
from routing.outcomes import OutcomeTable


@dataclass
class Scores:
    """``values[i, j]``: query i's score for ``experts[j]``; NaN where the strategy has no
    opinion (the selector then falls back). ``explanations[i]``: why, for query i."""

    experts: list[str]
    values: np.ndarray
    explanations: list[dict]


@dataclass(frozen=True)
class StrategyContext:
    """What the router can hand a strategy's constructor (see ``RoutingStrategy.needs``)."""

    encoder: Any = None
    instructions: dict[str, str] = field(default_factory=dict)


class RoutingStrategy(ABC):
    """Scores experts for queries (see the module doc for the contract)."""

    name: ClassVar[str] = ""
    # StrategyContext fields the constructor takes, by keyword.
    needs: ClassVar[tuple[str, ...]] = ()
    # Option → candidate values, searched by cross-validation (routing/eval/tuning.py).
    param_grid: ClassVar[dict[str, list]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unknown = set(cls.needs) - set(StrategyContext.__dataclass_fields__)
        if unknown:
            raise TypeError(f"{cls.__name__}.needs: unknown {sorted(unknown)}; valid: "
                            f"{sorted(StrategyContext.__dataclass_fields__)}")

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

    _experts: list[str]  # kept by fit / add_expert / remove_expert

    @property
    def experts(self) -> list[str]:
        """The experts this strategy can score, in column order of :class:`Scores`."""
        return list(self._experts)


def column_means(scores: np.ndarray) -> np.ndarray:
    """Mean score per expert column, NaN (no result) ignored; a column without results → 0."""
    counts = (~np.isnan(scores)).sum(axis=0)
    sums = np.nansum(scores, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def check_fit_inputs(
    outcomes: OutcomeTable, embeddings: np.ndarray, one_expert: str | None = None
) -> None:
    """Raise :class:`RoutingError` unless ``embeddings`` has one finite row per question and,
    for ``add_expert``, the table holds ``one_expert``."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(outcomes):
        raise RoutingError(
            f"need one embedding row per question: {len(outcomes)} questions, "
            f"embeddings of shape {embeddings.shape}"
        )
    if len(outcomes) == 0:
        raise RoutingError("no validation questions to build profiles from")
    if not np.isfinite(embeddings).all():
        raise RoutingError("embeddings contain NaN or inf")
    if one_expert is not None and one_expert not in outcomes.experts:
        raise RoutingError(f"outcomes have no column for expert {one_expert!r}")


def check_queries(texts: list[str], embeddings: np.ndarray, fitted: bool, name: str) -> None:
    """Raise :class:`RoutingError` on an unfitted strategy or mismatched queries."""
    if not fitted:
        raise RoutingError(f"{name}: not fitted (no experts); call fit() or add_expert() first")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise RoutingError(f"{name}: empty query")
    if np.asarray(embeddings).shape[0] != len(texts):
        raise RoutingError(f"{name}: {len(texts)} texts but {len(embeddings)} embeddings")
