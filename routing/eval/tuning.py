"""Hyperparameters chosen by cross-validation inside the train split only (the test split
is scored, never tuned on).

A strategy class lists its search space in ``param_grid``; :func:`tune` tries every
combination on k folds of train and keeps the best by :func:`objective`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from routing.eval.metrics import top1_hits, vote_hits
from routing.outcomes import OutcomeTable
from routing.strategies.base import RoutingStrategy


def folds(n: int, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (fit rows, held-out rows) pairs covering ``range(n)`` once each."""
    if count < 2 or n < count:
        raise ValueError(f"need 2 <= folds <= rows, got {count} folds for {n} rows")
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, count)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1:])), np.sort(part))
            for i, part in enumerate(parts)]


def out_of_fold(
    make: Callable[[], RoutingStrategy], table: OutcomeTable, embeddings: np.ndarray,
    count: int = 3, seed: int = 0,
) -> np.ndarray:
    """Scores for every row of ``table`` from a strategy fitted on the other folds."""
    values = np.full(table.scores.shape, np.nan, dtype=np.float32)
    for fit_rows, held in folds(len(table), count, seed):
        strategy = make()
        strategy.fit(table.subset(fit_rows), embeddings[fit_rows])
        scored = strategy.score([table.texts[i] for i in held], embeddings[held])
        columns = [table.experts.index(e) for e in scored.experts]
        values[np.ix_(held, columns)] = scored.values
    return values


def objective(values: np.ndarray, table: OutcomeTable) -> float:
    """What tuning maximises: top-3 majority-vote accuracy where answers exist, else top-1."""
    outcomes = np.nan_to_num(table.scores, nan=0.0)
    if table.predictions is not None:
        return float(vote_hits(values, outcomes, table.predictions).mean())
    return float(top1_hits(values, outcomes).mean())


def grid(space: dict[str, list]) -> list[dict]:
    """Every combination of the values in ``space``."""
    names = sorted(space)
    return [dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(space[n] for n in names))]


def tune(
    make: Callable[..., RoutingStrategy], table: OutcomeTable, embeddings: np.ndarray,
    count: int = 3, seed: int = 0, space: dict[str, list] | None = None, progress=None,
) -> tuple[dict, list[dict], np.ndarray]:
    """(best options, every tried option with its CV objective, the best's out-of-fold
    scores): ``make(**options)`` for each combination in ``space``, scored out of fold on
    ``table``."""
    trials, best_values = [], None
    for options in grid(space or {}):
        values = out_of_fold(lambda o=options: make(**o), table, embeddings, count, seed)
        trials.append({"options": options, "cv": objective(values, table)})
        if best_values is None or trials[-1]["cv"] > max(t["cv"] for t in trials[:-1]):
            best_values = values
        if progress is not None:
            progress.update(1)
    best = max(trials, key=lambda t: t["cv"])
    return best["options"], trials, best_values
