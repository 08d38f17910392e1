"""Reference rows every strategy is compared with, all chosen on train and scored on test:
the best single expert, the best expert per domain, the per-question oracle, a random pick,
and (where answers exist) a fixed top-3 panel with a majority vote."""

from __future__ import annotations

import numpy as np

from routing.eval.metrics import averaged, vote_hits
from routing.outcomes import OutcomeTable
from routing.strategies.base import column_means


def expert_means(table: OutcomeTable) -> np.ndarray:
    """Mean score per expert (missing results ignored; no result at all → 0)."""
    return column_means(table.scores)


def domain_prior(train: OutcomeTable, domains: list[str]) -> np.ndarray:
    """Per query (by its domain): each expert's mean score on train questions of that domain;
    domains unseen in train get the overall means."""
    overall = expert_means(train)
    labels = np.asarray(train.domains, dtype=object)
    by_domain = {
        d: expert_means(train.subset(np.flatnonzero(labels == d))) for d in set(train.domains)
    }
    return np.stack([by_domain.get(d, overall) for d in domains]) if domains else (
        np.zeros((0, len(train.experts)))
    )


def reference_rows(train: OutcomeTable, test: OutcomeTable,
                   average: str = "micro") -> dict[str, float | None]:
    """The reference figures on ``test`` (choices made on ``train``), ``average``d over
    queries (micro) or domains (macro, see :func:`~routing.eval.metrics.averaged`)."""
    outcomes = np.nan_to_num(test.scores, nan=0.0)
    n = len(test)
    single = np.tile(expert_means(train), (n, 1))
    by_domain = domain_prior(train, test.domains)
    rows = np.arange(n)
    hits = {
        "best_single": outcomes[rows, single.argmax(axis=1)],
        "best_per_domain": outcomes[rows, by_domain.argmax(axis=1)],
        "oracle": outcomes.max(axis=1),
        "random": outcomes.mean(axis=1),  # expectation of a uniform pick
        "static_top3_vote": None,
    }
    if test.predictions is not None:
        hits["static_top3_vote"] = vote_hits(single, outcomes, test.predictions)
    return {name: None if h is None else averaged(h, test.domains, average)
            for name, h in hits.items()}
