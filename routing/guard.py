"""The guard: a query leaves its default expert only when the evidence backs it.

Every strategy's scores pass through it, in the selection step (:mod:`routing.selection`)
and in the offline evaluation (:mod:`routing.eval.run`), with the same :func:`guarded`.

- **Default expert** of a query: the one named in the config (``routing.default_expert``);
  else, where the fit table has domains, the best expert of the query's domain when its
  lead over the best single expert there is backed (the lower confidence bound of the
  paired difference is above 0), else the best single expert. A query's domain is the
  majority label of its nearest fit questions (served queries carry none); a domain's
  default is chosen on the fit questions the vote puts in it (so it allows for the vote's
  mistakes, as served).
- **Margin** (per strategy): the strategy's top expert replaces the default only when its
  score beats the default's by more than ``margin``, chosen on out-of-fold scores of the
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
from routing.strategies.base import column_means

Z = 1.645  # one-sided 95 % lower bound
MIN_QUESTIONS = 100  # fewer fit questions cannot back a default of their own
NEIGHBOURS = 10  # fit questions whose domain labels vote for a query's domain
QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class DefaultExperts:
    """Each query's default expert: per (predicted) domain where backed, else ``single``;
    under a cost weight λ, a cheaper expert of the domain where its gain over the default
    there, plus λ·(cost saved)·(the domain's score spread, as :func:`routing.selection.
    penalise` scales it), is backed (its lower confidence bound is above 0)."""

    experts: list[str]
    single: str  # the default where no domain default is backed
    by_domain: dict[str, str]  # domain → its backed default (only where it differs)
    fit_embeddings: np.ndarray  # the fit questions, for the domain vote
    fit_domains: np.ndarray
    fit_predicted: np.ndarray  # each fit question's domain as voted by the others
    leads: dict[str, tuple]  # predicted domain → (mean, standard error) of each expert's
    # paired gain over the domain's default there, and the spread of its experts' means
    z: float = Z

    def domains(self, embeddings: np.ndarray, rows: np.ndarray | None = None) -> list[str]:
        """Each query's domain (``rows``: the queries are these fit questions, which do not
        vote for their own)."""
        if len(set(self.fit_domains)) < 2:
            return [str(self.fit_domains[0])] * len(embeddings)
        if rows is not None:
            return list(self.fit_predicted[rows])
        return predict_domains(self.fit_embeddings, self.fit_domains, embeddings)

    def names(self, domains: list[str], cost: np.ndarray | None = None,
              cost_weight: float = 0.0) -> list[str]:
        """The default expert for each of ``domains``; ``cost``: per expert of ``experts``,
        scaled to [0, 1], with ``cost_weight`` the λ of the request."""
        chosen = {d: self._choose(d, cost, cost_weight) for d in set(domains)}
        return [chosen[d] for d in domains]

    def _choose(self, domain: str, cost: np.ndarray | None, cost_weight: float) -> str:
        default = self.by_domain.get(domain, self.single)
        if not cost_weight or cost is None or domain not in self.leads:
            return default
        base = self.experts.index(default)
        mean, error, spread = self.leads[domain]
        bound = mean + cost_weight * (cost[base] - cost) * spread - self.z * error
        bound[base] = 0.0
        best = int(np.argmax(bound))
        return self.experts[best] if bound[best] > 0 else default

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
    embeddings = np.asarray(embeddings, dtype=np.float32)
    domains = np.asarray(table.domains, dtype=object)
    predicted = domains if len(set(table.domains)) < 2 else np.asarray(
        predict_domains(embeddings, domains, embeddings, np.arange(len(table))), dtype=object)
    by_domain = {} if default_expert else domain_defaults(table, predicted, single, z)
    leads = {d: _leads(table, predicted == d, by_domain.get(d, single)) for d in set(predicted)}
    return DefaultExperts(list(table.experts), single, by_domain, embeddings, domains,
                          predicted, leads, z)


def _leads(table: OutcomeTable, inside: np.ndarray, default: str) -> tuple:
    """(mean, standard error) of each expert's gain over ``default`` on the ``inside`` rows,
    and the spread of the experts' means there."""
    outcomes = np.nan_to_num(table.scores[inside], nan=0.0)
    gains = outcomes - outcomes[:, [table.experts.index(default)]]
    error = gains.std(axis=0, ddof=1) / np.sqrt(len(gains)) if len(gains) > 1 else (
        np.full(gains.shape[1], np.inf))
    means = column_means(table.scores[inside])
    return gains.mean(axis=0), error, float(means.max() - means.min()) or 1.0


def domain_defaults(table: OutcomeTable, predicted: np.ndarray, single: str,
                    z: float = Z) -> dict[str, str]:
    """Predicted domain → the best expert on the fit questions predicted into it (so the
    choice allows for the vote's mistakes, as served), where its lead over ``single`` there
    is backed."""
    if len(set(predicted)) < 2:
        return {}
    outcomes = np.nan_to_num(table.scores, nan=0.0)
    base = table.experts.index(single)
    chosen = {}
    for domain in sorted(set(predicted)):
        inside = predicted == domain
        best = int(np.argmax(column_means(table.scores[inside])))
        if best != base and backed(outcomes[inside, best] - outcomes[inside, base], z) > 0:
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
