"""Calibrated panel sizes (``k: auto``), after "Harder Tasks Need More Experts" (dynamic
expert counts): turn a strategy's scores for one query into a distribution over experts,
``p = softmax(scores / T)``, and recruit experts best first until their mass reaches
``k_mass`` (at most ``k_max``). A confident query gets one expert, an ambiguous one a panel.

``T`` is fitted on training outcomes (:func:`fit_temperature`) so that a panel's mass is the
chance that it holds a right answer. Without a fit, :data:`DEFAULT_TEMPERATURE` applies.
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


def fit_temperature(values: np.ndarray, outcomes: np.ndarray, k_max: int = 3) -> float:
    """The ``T`` (on a log grid, 0.001..10) that makes the panel's mass a probability: for
    j = 1..``k_max``, the summed ``softmax(values / T)`` of the j best-scored experts is
    fitted (cross-entropy) to whether one of them is right (the best of their outcomes,
    fractions allowed). So ``k_mass = 0.8`` recruits until the panel holds a right answer
    with a chance of about 0.8 by train's reckoning."""
    values = np.asarray(values, dtype=np.float64)
    outcomes = np.nan_to_num(np.asarray(outcomes, dtype=np.float64), nan=0.0)
    if not len(values):
        return DEFAULT_TEMPERATURE
    k = max(1, min(k_max, values.shape[1]))
    order = np.argsort(-np.where(np.isnan(values), -np.inf, values), axis=1, kind="stable")
    rows = np.arange(len(values))[:, None]
    target = np.clip(np.maximum.accumulate(outcomes[rows, order[:, :k]], axis=1), 0.0, 1.0)
    losses = []
    for t in _GRID:
        mass = np.clip(np.cumsum(distribution(values, t)[rows, order[:, :k]], axis=1),
                       1e-6, 1 - 1e-6)
        losses.append(float(-(target * np.log(mass) + (1 - target) * np.log(1 - mass)).mean()))
    return float(_GRID[int(np.argmin(losses))])


def panel_sizes(probabilities: np.ndarray, k_mass: float, k_max: int) -> np.ndarray:
    """Per row: how many experts, best first, until their mass reaches ``k_mass``
    (1..``k_max``)."""
    ordered = -np.sort(-np.atleast_2d(probabilities), axis=1)
    reached = np.cumsum(ordered, axis=1) >= k_mass - 1e-9
    first = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, ordered.shape[1])
    return np.clip(first, 1, k_max)
