"""The guard: a query leaves its default expert only when the evidence backs it.

Every strategy's scores pass through it, in the selection step (:mod:`routing.selection`)
and in the offline evaluation (:mod:`routing.eval.run`), with the same :func:`guarded`.

- **Default expert** of a query: the one named in the config (``routing.default_expert``);
  else, where the fit table has domains, the best expert of the query's domain when its
  lead over the best single expert there is backed (the lower confidence bound of the
  paired difference is above 0), else the best single expert. A query's domain is the
  majority label of its ``neighbours`` nearest fit questions (served queries carry none).
- **Margin** (per strategy): the strategy's top expert replaces the default only when its score beats
  the default's by more than ``margin``. The margin is chosen on out-of-fold scores of the
  fit table: among candidate margins (0 and quantiles of the positive score gaps), the one
  with the largest mean gain in outcome over always answering with the default, counting
  only margins whose gain has a lower confidence bound (mean − z·standard error) above 0.
  When none has, the margin is infinite: the default always answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from routing.errors import RoutingError
from routing.outcomes import OutcomeTable
from routing.strategies.common import column_means

Z = 1.645  # one-sided 95 % lower bound
MIN_QUESTIONS = 100  # fewer fit questions cannot back a default of their own
NEIGHBOURS = 10  # fit questions whose domain labels vote for a query's domain
QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class DefaultExperts:
    """Each query's default expert: per (predicted) domain where backed, else ``single``."""

    experts: list[str]
    single: str  # the default where no domain default is backed
    by_domain: dict[str, str]  # domain → its backed default (only where it differs)
    fit_embeddings: np.ndarray  # the fit questions, for the domain vote
    fit_domains: np.ndarray

    def names(self, embeddings: np.ndarray, rows: np.ndarray | None = None) -> list[str]:
        """The default expert of each query (``rows``: the queries are these fit questions,
        which do not vote for their own domain)."""
        if not self.by_domain:
            return [self.single] * len(embeddings)
        domains = predict_domains(self.fit_embeddings, self.fit_domains, embeddings, rows)
        return [self.by_domain.get(d, self.single) for d in domains]

    def describe(self) -> dict:
        return {"default": self.single, "by_domain": dict(self.by_domain)}


def columns(names: list[str], experts: list[str]) -> np.ndarray:
    """``names`` as column indices of ``experts`` (−1 where an expert is not there)."""
    where = {name: j for j, name in enumerate(experts)}
    return np.array([where.get(name, -1) for name in names], dtype=int)


def guarded(values: np.ndarray, defaults: np.ndarray,
            margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(values with the default promoted to the top where the guard holds back, held-back
    mask). ``defaults[i]``: query i's default column (−1: none, the row is left alone).
    The top expert is kept where its score beats the default's by more than ``margin``."""
    out = np.array(values, dtype=np.float64)
    rows = np.arange(len(out))
    filled = np.where(np.isnan(out), -np.inf, out)
    top = filled.max(axis=1) if out.size else np.zeros(0)
    has = (defaults >= 0) & np.isfinite(top)
    base = np.where(has, filled[rows, np.maximum(defaults, 0)], -np.inf)
    with np.errstate(invalid="ignore"):
        held = has & ~(top - base > margin)
    bump = 1e-6 * np.maximum(1.0, np.abs(top[held]))
    out[rows[held], defaults[held]] = top[held] + bump
    return out, held


def backed(gains: np.ndarray, z: float = Z) -> float:
    """The lower confidence bound of the mean of ``gains`` (−inf with fewer than 2)."""
    if len(gains) < 2:
        return -np.inf
    return float(gains.mean() - z * gains.std(ddof=1) / np.sqrt(len(gains)))


def fit_defaults(table: OutcomeTable, embeddings: np.ndarray,
                 default_expert: str | None = None, z: float = Z) -> DefaultExperts:
    """The default experts of ``table``'s pool: ``default_expert`` (an error naming it when
    it is not in the pool), else the best single, with backed per-domain defaults."""
    if default_expert is not None and default_expert not in table.experts:
        raise RoutingError(f"default expert {default_expert!r} is not in the pool "
                           f"({', '.join(table.experts)})")
    single = default_expert or table.experts[int(np.argmax(column_means(table.scores)))]
    outcomes = np.nan_to_num(table.scores, nan=0.0)
    by_domain = {} if default_expert else domain_defaults(table, outcomes, single, z)
    return DefaultExperts(list(table.experts), single, by_domain,
                          np.asarray(embeddings, dtype=np.float32),
                          np.asarray(table.domains, dtype=object))


def domain_defaults(table: OutcomeTable, outcomes: np.ndarray, single: str,
                    z: float = Z) -> dict[str, str]:
    """Domain → its best expert, where that expert's lead over ``single`` is backed."""
    labels = np.asarray(table.domains, dtype=object)
    if len(set(table.domains)) < 2:
        return {}
    base = table.experts.index(single)
    chosen = {}
    for domain in sorted(set(table.domains)):
        rows = outcomes[labels == domain]
        best = int(np.argmax(column_means(table.scores[labels == domain])))
        if best != base and backed(rows[:, best] - rows[:, base], z) > 0:
            chosen[domain] = table.experts[best]
    return chosen


def tune_margin(values: np.ndarray, outcomes: np.ndarray, defaults: np.ndarray,
                z: float = Z) -> float:
    """The margin with the largest backed mean gain over the defaults (inf: none backed)."""
    filled = np.where(np.isnan(values), -np.inf, values)
    rows = np.arange(len(values))
    top = np.argmax(filled, axis=1)
    has = defaults >= 0
    base = np.where(has, filled[rows, np.maximum(defaults, 0)], -np.inf)
    gap = filled[rows, top] - base
    gain = outcomes[rows, top] - np.where(has, outcomes[rows, np.maximum(defaults, 0)], 0.0)
    positive = gap[np.isfinite(gap) & (gap > 0)]
    if not len(positive):
        return np.inf
    best, margin = 0.0, np.inf
    for candidate in sorted({0.0, *np.quantile(positive, QUANTILES).tolist()}):
        gains = np.where(gap > candidate, gain, 0.0)
        if backed(gains, z) > 0 and gains.mean() > best:
            best, margin = float(gains.mean()), float(candidate)
    return margin


def predict_domains(fit_embeddings: np.ndarray, fit_domains: np.ndarray,
                    embeddings: np.ndarray, rows: np.ndarray | None = None,
                    neighbours: int = NEIGHBOURS, chunk: int = 1024) -> list[str]:
    """Majority domain of each query's nearest fit questions (embeddings are normalised);
    ``rows[i]``: the fit question query i is, left out of its own vote."""
    labels, codes = np.unique(fit_domains.astype(str), return_inverse=True)
    count = min(neighbours, len(fit_embeddings) - int(rows is not None))
    out = []
    for start in range(0, len(embeddings), chunk):
        sims = np.asarray(embeddings[start:start + chunk], dtype=np.float32) @ fit_embeddings.T
        if rows is not None:
            sims[np.arange(len(sims)), rows[start:start + chunk]] = -np.inf
        near = np.argpartition(-sims, count - 1, axis=1)[:, :count]
        votes = np.zeros((len(sims), len(labels)))
        np.add.at(votes, (np.arange(len(sims))[:, None], codes[near]), 1.0)
        out += labels[votes.argmax(axis=1)].tolist()
    return out


__all__ = ["MIN_QUESTIONS", "DefaultExperts", "backed", "columns", "fit_defaults", "guarded",
           "tune_margin"]
