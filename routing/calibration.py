"""Calibrated panel sizes (``k: auto``), after "Harder Tasks Need More Experts" (dynamic
expert counts): turn a strategy's scores for one query into a distribution over experts,
``p = softmax(scores / T)``, and recruit experts best first until their mass reaches
``k_mass`` (at most ``k_max``). A confident query gets one expert, an ambiguous one a panel.

``T`` is fitted on training outcomes (:func:`fit_temperature`) so that ``p`` matches which
experts are right: the target of a query is its outcome row normalised to sum 1 (queries
nobody answers are skipped). Without a fit, :data:`DEFAULT_TEMPERATURE` applies.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TEMPERATURE = 0.1
_GRID = np.logspace(-3, 1, 49)


def distribution(values: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise ``softmax(values / T)``; NaN scores get probability 0 (an all-NaN row is
    uniform)."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    logits = np.where(np.isnan(values), -np.inf, values / temperature)
    top = logits.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    weights = np.exp(logits - top)
    total = weights.sum(axis=1, keepdims=True)
    uniform = np.full_like(weights, 1.0 / max(values.shape[1], 1))
    return np.where(total > 0, weights / np.where(total > 0, total, 1.0), uniform)


def fit_temperature(values: np.ndarray, outcomes: np.ndarray) -> float:
    """The ``T`` (on a log grid, 0.001..10) minimising the cross-entropy between
    ``softmax(values / T)`` and the normalised outcome rows; the default when no row has a
    right answer."""
    outcomes = np.nan_to_num(np.asarray(outcomes, dtype=np.float64), nan=0.0)
    mass = outcomes.sum(axis=1)
    rows = mass > 0
    if not rows.any():
        return DEFAULT_TEMPERATURE
    target = outcomes[rows] / mass[rows, None]
    values = np.asarray(values, dtype=np.float64)[rows]
    losses = [float(-(target * np.log(distribution(values, t) + 1e-12)).sum(axis=1).mean())
              for t in _GRID]
    return float(_GRID[int(np.argmin(losses))])


def panel_sizes(probabilities: np.ndarray, k_mass: float, k_max: int) -> np.ndarray:
    """Per row: how many experts, best first, until their mass reaches ``k_mass``
    (1..``k_max``)."""
    ordered = -np.sort(-np.atleast_2d(probabilities), axis=1)
    reached = np.cumsum(ordered, axis=1) >= k_mass - 1e-9
    first = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, ordered.shape[1])
    return np.clip(first, 1, k_max)
