"""The adaptive panel (``k: auto``) offline: calibrate a strategy's scores on train, recruit
per test query until the mass reaches ``k_mass`` (at most ``k_max``), let the panel vote.

The vote: each recruited expert's answer letter counts with its calibrated probability
(``weighted``, the default: measured slightly better than counting on the MMLU-Pro open
pool) or 1 (what the serving aggregator's vote does; reported beside it as
``accuracy_counted_vote``); empty answers abstain; ties go to the higher-ranked expert. Without
answer letters the panel's figure is the outcome of its highest-weighted expert (top-1).
"""

from __future__ import annotations

import numpy as np

from routing.calibration import distribution, fit_temperature, panel_sizes

MASSES = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
DEFAULT_MASS, DEFAULT_MAX = 0.8, 3  # the RouteOptions defaults


def panel_hits(probabilities: np.ndarray, outcomes: np.ndarray, predictions: np.ndarray | None,
               sizes: np.ndarray, weighted: bool = True) -> np.ndarray:
    """Per query: the outcome of the answer the recruited panel (its ``sizes[i]`` most
    probable experts) agrees on."""
    k = int(sizes.max()) if len(sizes) else 1
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(probabilities))[:, None]
    if predictions is None:
        return outcomes[rows[:, 0], order[:, 0]]
    member = np.arange(k)[None, :] < sizes[:, None]
    letters = np.where(member, predictions[rows, order].astype(str), "")
    weights = (probabilities[rows, order] if weighted else np.ones(order.shape)) * member
    support = np.zeros(order.shape)
    for a in range(k):
        same = (letters == letters[:, a : a + 1]) & (letters[:, a : a + 1] != "")
        support[:, a] = (same * weights).sum(axis=1) + same.any(axis=1) * 1e-9
    winner = np.argmax(support, axis=1)  # first maximum = the higher-ranked expert
    return outcomes[rows[:, 0], order[rows[:, 0], winner]]


def auto_panel(train_values: np.ndarray, train_outcomes: np.ndarray, values: np.ndarray,
               outcomes: np.ndarray, predictions: np.ndarray | None, weighted: bool = True,
               k_max: int = DEFAULT_MAX) -> dict:
    """``{"accuracy", "mean_experts"}`` at the default ``k_mass``, the temperature fitted on
    train, and ``"curve": [[k_mass, accuracy, mean_experts], ...]``."""
    temperature = fit_temperature(train_values, train_outcomes, k_max)
    probabilities = distribution(values, temperature)
    curve = []
    for mass in sorted({*MASSES, DEFAULT_MASS}):
        sizes = panel_sizes(probabilities, mass, k_max)
        hits = panel_hits(probabilities, outcomes, predictions, sizes, weighted)
        curve.append([mass, float(hits.mean()), float(sizes.mean())])
    default = next(point for point in curve if point[0] == DEFAULT_MASS)
    sizes = panel_sizes(probabilities, DEFAULT_MASS, k_max)
    counted = panel_hits(probabilities, outcomes, predictions, sizes, weighted=not weighted)
    return {"accuracy": default[1], "mean_experts": default[2], "k_mass": DEFAULT_MASS,
            ("accuracy_counted_vote" if weighted else "accuracy_weighted_vote"):
                float(counted.mean()),
            "k_max": k_max, "temperature": temperature, "weighted_vote": weighted,
            "curve": curve}
