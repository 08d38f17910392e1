"""Metrics of a routing on a scored test split: top-1 accuracy, top-k recruitment with a
majority vote over the recruited experts' answers, mean cost, accuracy vs cost (λ sweep).

Every function takes ``values`` (queries × experts, the strategy's scores; NaN = no opinion,
ranked last) and ``outcomes`` (the same shape, the experts' real scores in [0, 1]).
"""

from __future__ import annotations

import numpy as np


def ranked(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best experts per query, best first (stable on ties)."""
    filled = np.where(np.isnan(values), -np.inf, values)
    return np.argsort(-filled, axis=1, kind="stable")[:, :k]


def top1_hits(values: np.ndarray, outcomes: np.ndarray) -> np.ndarray:
    """Per query: the outcome of the single best-scored expert."""
    best = ranked(values, 1)[:, 0]
    return outcomes[np.arange(len(values)), best]


def any_hits(values: np.ndarray, outcomes: np.ndarray, k: int = 3) -> np.ndarray:
    """Per query: the best outcome among the ``k`` recruited experts (a perfect aggregator)."""
    chosen = ranked(values, k)
    return outcomes[np.arange(len(values))[:, None], chosen].max(axis=1)


def vote_hits(
    values: np.ndarray,
    outcomes: np.ndarray,
    predictions: np.ndarray,
    k: int = 3,
    weighted: bool = False,
) -> np.ndarray:
    """Per query: recruit the ``k`` best-scored experts, take the answer most of them gave
    (empty answers abstain; ties go to the higher-scored expert), score that answer.

    ``weighted``: each vote counts with the expert's score instead of 1.
    """
    chosen = ranked(values, k)
    rows = np.arange(len(values))[:, None]
    letters = predictions[rows, chosen].astype(str)
    weights = values[rows, chosen] if weighted else np.ones(chosen.shape)
    weights = np.nan_to_num(weights, nan=0.0)
    support = np.zeros(chosen.shape)
    for a in range(chosen.shape[1]):
        same = (letters == letters[:, a : a + 1]) & (letters[:, a : a + 1] != "")
        support[:, a] = (same * weights).sum(axis=1) + same.any(axis=1) * 1e-9
    winner = np.argmax(support, axis=1)  # first maximum = the higher-scored expert
    return outcomes[rows[:, 0], chosen[rows[:, 0], winner]]


def cost_of(values: np.ndarray, cost: np.ndarray, k: int = 1) -> float:
    """Mean summed cost of the ``k`` experts recruited per query."""
    return float(cost[ranked(values, k)].sum(axis=1).mean())


def cost_sweep(
    values: np.ndarray, outcomes: np.ndarray, cost: np.ndarray, weights: list[float],
    guard=None, domains: list[str] | None = None,
) -> list[dict]:
    """Top-1 accuracy and mean cost for each λ in ``weights``, with the router's own cost
    penalty (:func:`routing.selection.penalise`, costs scaled by the most expensive), then
    ``guard`` (penalised scores, λ → guarded ones), as the router selects. With ``domains``,
    each point also has ``top1_macro``."""
    from routing.selection import penalise

    top = float(cost.max()) if cost.size else 0.0
    scaled = cost / top if top > 0 else cost
    points = []
    for weight in weights:
        routed = np.stack([penalise(row, scaled, weight) for row in values])
        routed = guard(routed, weight) if guard is not None else routed
        hits = top1_hits(routed, outcomes)
        points.append({"lambda": float(weight), "top1": float(hits.mean()),
                       "mean_cost": cost_of(routed, cost)})
        if domains is not None:
            points[-1]["top1_macro"] = averaged(hits, domains, "macro")
    return points


def per_domain(hits: np.ndarray, domains: list[str]) -> dict[str, float]:
    """Mean of ``hits`` per domain."""
    labels = np.asarray(domains, dtype=object)
    return {d: float(hits[labels == d].mean()) for d in sorted(set(domains))}


def averaged(hits: np.ndarray, domains: list[str], average: str = "micro") -> float:
    """``micro``: the mean over queries (pooled); ``macro``: the unweighted mean of the
    per-domain means, as routing papers report it (every domain counts the same)."""
    if average == "micro":
        return float(np.mean(hits))
    if average == "macro":
        return float(np.mean(list(per_domain(hits, domains).values())))
    raise ValueError(f"average must be 'micro' or 'macro', got {average!r}")
