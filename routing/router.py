"""The router façade: one encoder pass per batch, the pattern cache, a strategy's scores,
then selection. Experts join and leave at runtime through every strategy at once.

:func:`build_router` makes one from the app config. Profiles come from the ``outcomes``
table passed in (else the config's ``routing.outcomes`` folder), merged with the stored
validation outcomes of a profile store (``conclave experts add --validate-on``; they
replace an expert's column), and, for experts in neither, their own example questions,
where each example counts as a correct answer for its expert and a wrong one for every
other expert (so an expert is recruited for questions like its own; it then also counts
as wrong on the validated questions).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from experts.spec import ExpertSpec
from routing.calibration import fit_temperature
from routing.errors import RoutingError
from routing.eval.tuning import out_of_fold
from routing.guard import MIN_QUESTIONS, DefaultExperts, columns, fit_defaults, tune_margin
from routing.options import RouteOptions
from routing.outcomes import OutcomeTable
from routing.selection import Decision, select
from routing.served_outcomes import served_outcomes
from routing.strategies import STRATEGIES, make_strategy
from routing.strategies.base import RoutingStrategy, StrategyContext

log = logging.getLogger(__name__)
CALIBRATION_QUESTIONS = 512  # fit-table questions the k=auto temperature is fitted on
GUARD_QUESTIONS = 2000  # fit-table questions a strategy's guard margin is fitted on


class Router:
    """Routes batches of queries with any of its ``strategies`` (name → fitted strategy)."""

    def __init__(
        self,
        encoder,
        strategies: dict[str, RoutingStrategy],
        *,
        default_strategy: str,
        costs: dict[str, float] | None = None,
        cache=None,
        version: Callable[[], int] = lambda: 0,
        prior: dict[str, float] | None = None,
        default_expert: str | None = None,
        factories: dict[str, Callable[[], RoutingStrategy]] | None = None,
    ):
        if default_strategy not in strategies:
            raise RoutingError(
                f"default strategy {default_strategy!r} is not among {sorted(strategies)}"
            )
        self.encoder, self.strategies = encoder, dict(strategies)
        self.default_strategy, self.cache, self.version = default_strategy, cache, version
        self.costs = dict(costs or {})
        self.prior = dict(prior or {})  # expert -> mean validation score (the fallback)
        # (start, end) wall-clock ns of the last route()'s encode, cache and strategy steps
        self.phases: dict[str, tuple[int, int]] = {}
        self.unavailable: dict[str, str] = {}  # strategy -> why it could not be fitted
        self.temperatures: dict[str, float] = {}  # strategy -> k=auto calibration
        self._calibration: OutcomeTable | None = None  # a sample of the fit table, for it
        self._calibration_embeddings: np.ndarray | None = None
        # The guard (routing.guard): the default experts, and per strategy its margin,
        # cross-validated on first use with a fresh strategy from ``factories``.
        self.default_expert, self.factories = default_expert, dict(factories or {})
        self.defaults: DefaultExperts | None = None
        self.guard_off = "not fitted"  # why there is no guard, when there is none
        self.margins: dict[str, float] = {}
        self._guard_rows = np.zeros(0, dtype=int)
        self._fit_table: tuple[OutcomeTable, np.ndarray] | None = None

    @property
    def experts(self) -> list[str]:
        """Every expert some strategy can score, sorted."""
        return sorted({e for s in self.strategies.values() for e in s.experts})

    def fit(self, outcomes: OutcomeTable) -> None:
        """Fit every strategy on ``outcomes`` (one encoder pass over its questions)."""
        embeddings = self.encoder.encode(outcomes.texts)
        for name, strategy in list(self.strategies.items()):
            try:
                strategy.fit(outcomes, embeddings)
            except (RoutingError, ValueError) as err:
                if name == self.default_strategy:
                    raise RoutingError(f"default strategy {name!r} cannot be fitted: {err}") from err
                # Another strategy's data needs must not take the router down: drop it, say why.
                log.warning("routing strategy %r unavailable: %s", name, err)
                self.unavailable[name] = str(err)
                del self.strategies[name]
        self.prior.update(_means(outcomes))
        for name, cost in outcomes.cost.items():
            self.costs.setdefault(name, cost)
        rows = np.sort(np.random.default_rng(0).permutation(len(outcomes))[:CALIBRATION_QUESTIONS])
        self._calibration = outcomes.subset(rows)
        self._calibration_embeddings = embeddings[rows]
        self.temperatures.clear()
        self._fit_guard(outcomes, embeddings)

    def _fit_guard(self, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        self.margins.clear()
        self.defaults, self._fit_table = None, (outcomes, embeddings)
        if len(outcomes) < MIN_QUESTIONS and self.default_expert is None:
            self.guard_off = (f"{len(outcomes)} fit questions (< {MIN_QUESTIONS}) back no "
                              "default expert; name one in routing.default_expert")
            return
        self.defaults = fit_defaults(outcomes, embeddings, self.default_expert)
        order = np.random.default_rng(0).permutation(len(outcomes))
        self._guard_rows = np.sort(order[:GUARD_QUESTIONS])

    def guard(self, name: str, embeddings: np.ndarray,
              cost_weight: float = 0.0) -> tuple[list[str], float] | None:
        """(each query's default expert under ``cost_weight``, strategy ``name``'s margin),
        or None (no guard: ``guard_off`` says why). The margin is fitted on first use."""
        if self.defaults is None:
            return None
        if name not in self.margins:
            self.margins[name] = self._margin(name)
        cost = np.array([self.costs.get(e, 0.0) for e in self.defaults.experts])
        cost = cost / cost.max() if cost.size and cost.max() > 0 else None
        names = self.defaults.names(self.defaults.domains(embeddings), cost, cost_weight)
        return names, self.margins[name]

    def _margin(self, name: str) -> float:
        table, embeddings = self._fit_table
        rows = self._guard_rows
        if name not in self.factories or len(rows) < MIN_QUESTIONS:
            return np.inf  # nothing to cross-validate on: nothing backs leaving the default
        sample = table.subset(rows)
        values = out_of_fold(self.factories[name], sample, embeddings[rows])
        domains = self.defaults.domains(embeddings[rows], rows)
        defaults = columns(self.defaults.names(domains), sample.experts)
        return tune_margin(values, np.nan_to_num(sample.scores, nan=0.0), defaults)

    def temperature(self, name: str) -> float | None:
        """Strategy ``name``'s k=auto temperature, fitted on first use on a sample of the
        fit table (:func:`routing.calibration.fit_temperature`); None before any fit."""
        if name not in self.temperatures and self._calibration is not None:
            table = self._calibration
            scores = self.strategies[name].score(table.texts, self._calibration_embeddings)
            columns = [table.experts.index(e) if e in table.experts else None
                       for e in scores.experts]
            outcomes = np.stack([table.scores[:, c] if c is not None else
                                 np.full(len(table), np.nan) for c in columns], axis=1)
            self.temperatures[name] = fit_temperature(scores.values, outcomes)
        return self.temperatures.get(name)

    def route(self, queries: list[str], options: RouteOptions | None = None) -> list[Decision]:
        """One decision per query, in order."""
        options = options or RouteOptions()
        name = options.strategy or self.default_strategy
        strategy = self.strategies.get(name)
        if strategy is None and name in self.unavailable:
            raise RoutingError(f"routing strategy {name!r} is unavailable: {self.unavailable[name]}")
        if strategy is None:
            raise RoutingError(
                f"unknown routing strategy {name!r}; valid: {', '.join(sorted(self.strategies))}"
            )
        if not queries:
            return []
        options = options.with_strategy(name)  # the cache keys on the strategy that decides
        started = time.time_ns()
        embeddings = self.encoder.encode(list(queries))  # raises on an empty query
        encoded = time.time_ns()
        version = self.version()
        decisions: list[Decision | None] = [
            self._cached(q, e, version, options) for q, e in zip(queries, embeddings,
                                                                 strict=True)
        ]
        looked_up = time.time_ns()
        todo = [i for i, d in enumerate(decisions) if d is None]
        if todo:
            texts = [queries[i] for i in todo]
            scores = strategy.score(texts, embeddings[todo])
            temperature = self.temperature(name) if options.k == "auto" else None
            guard = (self.guard(name, embeddings[todo], options.cost_weight) if options.guard
                     else None)
            fresh = select(texts, scores, options, name, costs=self.costs, prior=self.prior,
                           temperature=temperature, guard=guard)
            for decision in fresh if options.guard and guard is None else []:
                decision.explanation["guard"] = {"off": self.guard_off}
            for i, decision in zip(todo, fresh, strict=True):
                decisions[i] = decision
                if self.cache is not None:
                    self.cache.store(queries[i], embeddings[i], version, options, decision)
        self.phases = {"encode": (started, encoded), "cache": (encoded, looked_up),
                       "strategy": (looked_up, time.time_ns())}
        return decisions

    def add_expert(self, expert_id: str, outcomes: OutcomeTable, cost: float = 0.0) -> None:
        """Add (or replace) ``expert_id`` in every strategy from its validation outcomes."""
        if expert_id not in outcomes.experts:
            raise RoutingError(
                f"outcomes have no column for expert {expert_id!r} (columns: {outcomes.experts})"
            )
        column = outcomes.with_experts([expert_id])
        embeddings = self.encoder.encode(column.texts)
        for strategy in self.strategies.values():
            strategy.add_expert(expert_id, column, embeddings)
        self.costs[expert_id] = float(cost)
        self.prior.update(_means(column))
        self.margins.clear()  # refitted on next use, with the new expert

    def remove_expert(self, expert_id: str) -> None:
        """Forget ``expert_id`` in every strategy (profiles and index vectors)."""
        if expert_id not in self.experts:
            raise RoutingError(f"unknown expert {expert_id!r}; known: {self.experts}")
        for strategy in self.strategies.values():
            if expert_id in strategy.experts:
                strategy.remove_expert(expert_id)
        self.costs.pop(expert_id, None)
        self.prior.pop(expert_id, None)
        self.margins.clear()

    def _cached(self, query, embedding, version, options: RouteOptions) -> Decision | None:
        if self.cache is None:
            return None
        decision = self.cache.lookup(query, embedding, version, options)
        if decision is not None:
            decision.query = query  # a near hit was decided for a neighbour's text
        return decision


def _means(outcomes: OutcomeTable) -> dict[str, float]:
    means = {}
    for j, name in enumerate(outcomes.experts):
        column = outcomes.scores[:, j]
        if np.isfinite(column).any():
            means[name] = float(np.nanmean(column))
    return means


def outcomes_from_specs(specs: list[ExpertSpec]) -> OutcomeTable:
    """Outcomes from the specs' example questions: correct for its expert, wrong for others."""
    rows = [(spec, n, text) for spec in specs for n, text in enumerate(spec.examples)]
    if not rows:
        raise RoutingError(
            "no outcome data: set routing.outcomes, validate experts (--validate-on), "
            "or give the experts example questions"
        )
    experts = [spec.id for spec in specs]
    scores = np.zeros((len(rows), len(experts)), dtype=np.float32)
    for i, (spec, _, _) in enumerate(rows):
        scores[i, experts.index(spec.id)] = 1.0
    return OutcomeTable(
        ids=[f"{spec.id}:example:{n}" for spec, n, _ in rows],
        texts=[text for _, _, text in rows],
        domains=[spec.domain or spec.id for spec, _, _ in rows],
        experts=experts,
        scores=scores,
        cost={spec.id: spec.cost for spec in specs},
    )


def example_outcomes(spec: ExpertSpec, others: list[ExpertSpec]) -> OutcomeTable:
    """A new expert's column from example questions, as :func:`outcomes_from_specs` builds
    it at start: right on its own examples, wrong on every other expert's. (Scored on its
    own examples alone, it would score 1.0 wherever they are among a query's neighbours.)"""
    rest = [other for other in others if other.id != spec.id and other.examples]
    return outcomes_from_specs([spec, *rest]).with_experts([spec.id])


def build_router(config, specs: list[ExpertSpec], outcomes: OutcomeTable | None,
                 encoder=None, cache=None, version: Callable[[], int] = lambda: 0,
                 profiles=None) -> Router:
    """A fitted router for ``specs`` from a :class:`~cluster.config.ConclaveConfig`.

    ``profiles`` (a :class:`~routing.profile_store.ProfileStore`): experts with stored
    validation outcomes are profiled from them (see :func:`startup_outcomes`)."""
    from routing.encoder import build_encoder

    encoder = encoder or build_encoder(config.encoder)
    if outcomes is None and config.routing.outcomes:
        subset = config.routing.outcomes_subset
        outcomes = served_outcomes(config.routing.outcomes, specs, subset.split, subset.seed,
                                   subset.experts_only)
    if outcomes is not None and specs:
        _match_specs(outcomes, specs)
    outcomes = startup_outcomes(specs, outcomes, profiles)
    context = StrategyContext(encoder, {spec.id: spec.task_instruction for spec in specs})
    trained = config.routing.trained_router
    factories = {
        name: partial(make_strategy, name,
                      _options(cls, config.routing.strategies.get(name), trained), context)
        for name, cls in STRATEGIES.items()
        # A learned strategy trains for minutes without weights: only when asked for.
        if not getattr(cls, "trains", False) or trained or name == config.routing.strategy
    }
    strategies = {name: make() for name, make in factories.items()}
    if config.routing.strategy not in strategies:
        raise RoutingError(
            f"routing.strategy {config.routing.strategy!r} unknown; valid: {sorted(strategies)}"
        )
    costs = {**outcomes.cost, **{spec.id: spec.cost for spec in specs}}
    router = Router(encoder, strategies, default_strategy=config.routing.strategy,
                    costs=costs, cache=cache, version=version,
                    default_expert=config.routing.default_expert, factories=factories)
    router.fit(outcomes)
    return router


def startup_outcomes(specs: list[ExpertSpec], base: OutcomeTable | None,
                     profiles=None) -> OutcomeTable:
    """The table a router starts from: ``base`` (the config's outcome data), each expert's
    stored validation outcomes in ``profiles`` (replacing its ``base`` column: they are the
    newer), and, for experts in neither, their example questions."""
    from routing.profile_store import merge_columns

    ids = {spec.id for spec in specs}
    stored = set(profiles.experts()) & ids if profiles is not None else set()
    tables = [profiles.load(spec.id) for spec in specs if spec.id in stored]
    if base is not None:
        keep = [name for name in base.experts if name not in stored]
        tables[:0] = [base.with_experts(keep)] if keep else []
    covered = {name for table in tables for name in table.experts}
    rest = [spec for spec in specs if spec.id not in covered]
    if not tables:
        return outcomes_from_specs(specs)
    if any(spec.examples for spec in rest):
        tables.append(outcomes_from_specs(rest))
    if len(tables) == 1:
        return tables[0]
    merged = merge_columns(tables)
    # The examples rule again: an example-profiled expert counts as wrong on every question
    # that is not one of its examples (validated experts keep NaN where they did not run).
    for spec in rest:
        if spec.id in merged.experts:
            column = merged.scores[:, merged.experts.index(spec.id)]
            column[np.isnan(column)] = 0.0
    return merged


def _match_specs(outcomes: OutcomeTable, specs: list[ExpertSpec]) -> None:
    ids = [spec.id for spec in specs]
    orphans = [name for name in outcomes.experts if name not in ids]
    if orphans:
        raise RoutingError(
            f"outcome data has column(s) {orphans} with no expert spec; add specs for them "
            f"or drop the columns (experts: {ids})"
        )



def _options(cls, options: dict | None, trained: str | None) -> dict:
    """A strategy's config options, plus the trained weights for a learned one."""
    options = dict(options or {})
    if trained and getattr(cls, "trains", False):
        options.setdefault("weights", trained)
    return options
