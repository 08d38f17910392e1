"""``conclave eval``: fit each strategy on the train split (its options tuned by
cross-validation inside train), score the test split, compare with the reference rows.

The result is a plain dict, written as ``eval.json``::

    {"strategies": {NAME: {"top1", "top1_macro", "top3_vote", "top3_vote_macro",
                           "mean_cost", ...}},
     "reference": {"best_single", "best_per_domain", "oracle", "random", ...},
     "reference_macro": {the same rows, macro-averaged}, "meta": {..., "average"}}

Every strategy's scores pass through the guard (:mod:`routing.guard`: the default experts
fitted on train, the margin on the strategy's out-of-fold scores there); ``top1_unguarded``
and ``held_back`` say what it changed, ``guard`` what it was.

Where the data has costs: per strategy ``cost_at_best_single``, ``saving_at_best_single`` and
``lambda_at_best_single`` (and ``_macro`` twins), and top-level ``pareto`` / ``pareto_macro``
(:mod:`routing.eval.cost`).

and per strategy ``"auto"``: the adaptive panel (``k: auto``, :mod:`routing.eval.panel`),
``{"accuracy", "mean_experts", "curve": [[k_mass, accuracy, mean_experts], ...], ...}``.

``top1`` and ``top3_vote`` are micro averages (the mean over test questions); the ``_macro``
twins are the unweighted mean of the per-domain accuracies. ``meta.average`` records which
one the printed table shows (``conclave eval --average``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from routing.eval.cost import cost_figures
from routing.eval.metrics import (
    any_hits,
    averaged,
    cost_of,
    cost_sweep,
    per_domain,
    ranked,
    top1_hits,
    vote_hits,
)
from routing.eval.panel import auto_panel
from routing.eval.pools import resolve_pool
from routing.eval.reference import expert_means, reference_rows
from routing.eval.split import make_split
from routing.eval.tuning import grid, out_of_fold, tune
from routing.guard import DefaultExperts, columns, fit_defaults, guarded, tune_margin
from routing.outcomes import OutcomeError, OutcomeTable, load_outcomes
from routing.strategies.hybrid import standardise

DEFAULT_STRATEGIES = ("knn", "pilots", "hybrid")
LAMBDAS = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
           5.0]


def load_eval_table(data_dir: str | Path, pool: str | None) -> OutcomeTable:
    """The questions every model of the data set answered (so every pool is scored on the
    same questions), restricted to the experts of ``pool``."""
    table = load_outcomes(data_dir)
    complete = table.complete_rows()
    if len(complete) < 10:
        raise OutcomeError(f"{data_dir}: only {len(complete)} questions have results for "
                           "every model")
    return table.subset(complete).with_experts(resolve_pool(pool, table.experts))


def build(name: str, options: dict, encoder):
    """Strategy ``name`` with ``options``; the evaluation's context is the encoder alone."""
    from routing.strategies import StrategyContext, make_strategy

    return make_strategy(name, options, StrategyContext(encoder=encoder))


def evaluate(data_dir: str | Path, pool: str | None = None,
             strategies: tuple[str, ...] = DEFAULT_STRATEGIES, seed: int = 0,
             encoder=None, folds: int = 3, progress: bool = True,
             average: str = "micro", default_expert: str | None = None) -> dict:
    """Run the whole offline evaluation; see the module doc for the result's shape."""
    from routing.strategies import STRATEGIES, make_strategy

    averaged(np.zeros(1), ["d"], average)  # raises on a bad average before any work
    for name in strategies:
        if name not in STRATEGIES:
            make_strategy(name)  # raises RoutingError naming the valid strategies
    if encoder is None:  # one encoder for the embeddings and the strategies that embed
        from routing.encoder import SentenceEncoder

        encoder = SentenceEncoder()
    table = load_eval_table(data_dir, pool)
    train_rows, test_rows = make_split(data_dir, table, seed=seed)
    embeddings = encoder.encode(table.texts)
    train, test = table.subset(train_rows), table.subset(test_rows)
    defaults = fit_defaults(train, embeddings[train_rows], default_expert)
    tuner = _Tuner(train, embeddings[train_rows], encoder, folds, seed, progress,
                   parts=tuple(n for n in strategies if n != "hybrid") or ("knn", "pilots"),
                   defaults=defaults)
    test_domains = defaults.domains(embeddings[test_rows])
    rows = {name: _strategy_result(name, tuner, test, embeddings[test_rows], test_domains)
            for name in _bar(strategies, "strategies", progress)}
    reference = reference_rows(train, test)
    reference_macro = reference_rows(train, test, average="macro")
    single = train.experts[int(np.argmax(expert_means(train)))]
    single_cost = test.cost.get(single)
    fronts = {} if single_cost is None else cost_figures(rows, reference, reference_macro,
                                                         single_cost)
    return {
        "strategies": rows, "reference": reference, "reference_macro": reference_macro,
        **fronts,
        "meta": {"data": str(data_dir), "pool": table.experts, "seed": seed, "average": average,
                 "train": len(train), "test": len(test), "folds": folds,
                 "cost": {e: test.cost.get(e) for e in test.experts},
                 "best_single": {"expert": single, "cost": single_cost}},
    }


def _strategy_result(name: str, tuner: _Tuner, test: OutcomeTable,
                     test_embeddings: np.ndarray, test_domains: list[str]) -> dict:
    """Fit ``name`` on train with its tuned options, score test: its row of eval.json."""
    options, cv = tuner.options(name)
    strategy = build(name, options, tuner.encoder)
    strategy.fit(tuner.train, tuner.embeddings)
    margin = tune_margin(tuner.out_of_fold(name, strategy), tuner.outcomes,
                         tuner.train_defaults)
    guard = HeldOutGuard(tuner.defaults, test_domains, test.experts, _scaled_cost(test), margin)
    scored = strategy.score(test.texts, test_embeddings)
    row = strategy_row(scored, test, guard)
    row["auto"] = auto_row(strategy.score(tuner.train.texts, tuner.embeddings), tuner.train,
                           scored, test, guard)
    row.update(options=_plain(options), cv=cv,
               guard={**tuner.defaults.describe(), "margin": None if np.isinf(margin) else margin})
    if isinstance(getattr(strategy, "weights", None), dict):
        row["fitted_weights"] = _plain(strategy.weights)  # the hybrid's mix
    return row


@dataclass
class HeldOutGuard:
    """The guard on the test split: scores (penalised by ``cost_weight``) → guarded scores."""

    defaults: DefaultExperts
    domains: list[str]  # each test query's (predicted) domain
    experts: list[str]
    cost: np.ndarray | None  # per expert, scaled to [0, 1]
    margin: float

    def __call__(self, values: np.ndarray, cost_weight: float = 0.0) -> np.ndarray:
        names = self.defaults.names(self.domains, self.cost, cost_weight)
        return guarded(values, columns(names, self.experts), self.margin)[0]


def _scaled_cost(table: OutcomeTable) -> np.ndarray | None:
    cost = np.array([table.cost.get(e, np.nan) for e in table.experts], dtype=np.float64)
    if not np.isfinite(cost).all() or not cost.size or cost.max() <= 0:
        return None
    return cost / cost.max()


@dataclass
class _Tuner:
    """Options per strategy, tuned once by CV on train (a strategy's ``param_grid``), their
    out-of-fold scores, and the guard's default experts (one set for every strategy)."""

    train: OutcomeTable
    embeddings: np.ndarray
    encoder: object
    folds: int
    seed: int
    progress: bool
    parts: tuple[str, ...]  # the hybrid's components
    defaults: DefaultExperts
    done: dict = field(default_factory=dict)
    oof: dict = field(default_factory=dict)  # name -> out-of-fold scores on train

    @property
    def outcomes(self) -> np.ndarray:
        return np.nan_to_num(self.train.scores, nan=0.0)

    @cached_property
    def train_defaults(self) -> np.ndarray:
        domains = self.defaults.domains(self.embeddings, np.arange(len(self.train)))
        return columns(self.defaults.names(domains), self.train.experts)

    def options(self, name: str) -> tuple[dict, float | None]:
        if name == "hybrid":
            # Components run with their own tuned options; the weights are fitted by CV
            # inside HybridStrategy.fit, on train only.
            return {"components": self.parts, "folds": self.folds, "seed": self.seed,
                    "options": {p: self.options(p)[0] for p in self.parts}}, None
        if name not in self.done:
            from routing.strategies import STRATEGIES

            space = getattr(STRATEGIES[name], "param_grid", {})
            if not space:
                self.done[name] = ({}, None)
                return self.done[name]
            bar = _bar(None, f"tuning {name}", self.progress, total=len(grid(space)))
            options, trials, self.oof[name] = tune(lambda **o: build(name, o, self.encoder),
                                                   self.train, self.embeddings, self.folds,
                                                   self.seed, space, bar)
            bar.close()
            self.done[name] = (options, max(t["cv"] for t in trials))
        return self.done[name]

    def out_of_fold(self, name: str, strategy) -> np.ndarray:
        """``name``'s out-of-fold scores on train (the hybrid's: its components', mixed
        with its fitted weights, as its own CV computes them)."""
        if name == "hybrid":
            return sum(w * standardise(self.out_of_fold(p, None))
                       for p, w in strategy.weights.items())
        if name not in self.oof:
            options = self.options(name)[0]
            self.oof[name] = out_of_fold(lambda: build(name, options, self.encoder),
                                         self.train, self.embeddings, self.folds, self.seed)
        return self.oof[name]


def aligned(scores, table: OutcomeTable) -> np.ndarray:
    """A strategy's score values with columns in ``table.experts`` order."""
    columns = [scores.experts.index(e) for e in table.experts]
    return np.asarray(scores.values, dtype=np.float64)[:, columns]


def auto_row(train_scores, train: OutcomeTable, test_scores, test: OutcomeTable,
             guard: HeldOutGuard | None = None) -> dict:
    """The adaptive panel (k=auto) of one strategy: calibrated on its train scores (as the
    router calibrates on its fit table), scored on test (through ``guard``)."""
    values = aligned(test_scores, test)
    return auto_panel(aligned(train_scores, train), train.scores,
                      guard(values) if guard else values,
                      np.nan_to_num(test.scores, nan=0.0), test.predictions)


def strategy_row(scores, test: OutcomeTable, guard: HeldOutGuard | None = None) -> dict:
    """The metrics of one strategy's scores on the test split; with ``guard`` (scores →
    guarded scores), of the guarded routing, and ``top1_unguarded`` and ``held_back``."""
    raw = aligned(scores, test)
    values = guard(raw) if guard else raw
    outcomes = np.nan_to_num(test.scores, nan=0.0)
    cost = np.array([test.cost.get(e, np.nan) for e in test.experts], dtype=np.float64)
    has_cost = bool(test.cost) and np.isfinite(cost).all()
    hits = top1_hits(values, outcomes)
    votes = None if test.predictions is None else vote_hits(values, outcomes, test.predictions)
    return {
        "top1": float(hits.mean()),
        "top1_macro": averaged(hits, test.domains, "macro"),
        "top3_vote": None if votes is None else float(votes.mean()),
        "top3_vote_macro": None if votes is None else averaged(votes, test.domains, "macro"),
        "top3_any": float(any_hits(values, outcomes).mean()),
        "mean_cost": cost_of(values, cost) if has_cost else None,
        "mean_cost_top3": cost_of(values, cost, k=3) if has_cost else None,
        "per_domain": per_domain(hits, test.domains),
        "per_domain_vote": None if votes is None else per_domain(votes, test.domains),
        "cost_sweep": cost_sweep(raw, outcomes, cost, LAMBDAS, guard, test.domains)
        if has_cost else [],
        **({} if guard is None else guard_figures(raw, values, outcomes, test.domains)),
        "cost_sweep_unguarded": cost_sweep(raw, outcomes, cost, LAMBDAS, None, test.domains)
        if has_cost and guard is not None else [],
    }


def guard_figures(raw: np.ndarray, values: np.ndarray, outcomes: np.ndarray,
                  domains: list[str]) -> dict:
    """What the guard changed: the unguarded top-1 (micro, macro) and the share held back."""
    hits = top1_hits(raw, outcomes)
    moved = ranked(raw, 1)[:, 0] != ranked(values, 1)[:, 0]
    return {"top1_unguarded": float(hits.mean()),
            "top1_unguarded_macro": averaged(hits, domains, "macro"),
            "held_back": float(moved.mean())}


def _bar(items, desc: str, enabled: bool, total: int | None = None):
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, disable=not enabled, leave=False)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
