"""Hybrid: a weighted sum of other strategies' scores, each standardised per query
(z-score across experts, so units do not matter), with weights fitted by cross-validation
on the validation data it is given (out-of-fold scores, a grid on the weight simplex).

Adding or removing an expert is passed to every component; the weights stay as fitted.
"""

from __future__ import annotations

import numpy as np

from routing.errors import RoutingError
from routing.outcomes import OutcomeTable
from routing.strategies.base import RoutingStrategy, Scores, StrategyContext


def standardise(values: np.ndarray) -> np.ndarray:
    """Per row: (x − mean) / std over the scored experts; unscored (NaN) → 0 (the mean)."""
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(values, axis=1, keepdims=True)
        std = np.nanstd(values, axis=1, keepdims=True)
    z = (values - mean) / np.where(std > 0, std, 1.0)
    return np.nan_to_num(z, nan=0.0)


def simplex(parts: int, step: float) -> list[tuple[float, ...]]:
    """Weight vectors of ``parts`` non-negative entries summing to 1, on a ``step`` grid."""
    units = round(1 / step)

    def spread(left: int, slots: int):
        if slots == 1:
            yield (left,)
            return
        for first in range(left + 1):
            for rest in spread(left - first, slots - 1):
                yield (first, *rest)

    return [tuple(u / units for u in combo) for combo in spread(units, parts)]


class HybridStrategy(RoutingStrategy):
    """``Σ_c w_c · z(scores_c)`` over component strategies ``c``."""

    name = "hybrid"
    needs = ("encoder", "instructions")  # handed on to the components that need them

    def __init__(self, components: tuple[str, ...] = ("knn", "pilots"),
                 options: dict[str, dict] | None = None, folds: int = 3, step: float = 0.1,
                 seed: int = 0, weights: dict[str, float] | None = None, encoder=None,
                 instructions: dict[str, str] | None = None):
        if len(components) < 1 or len(set(components)) != len(components):
            raise RoutingError(f"hybrid: components must be distinct names, got {components}")
        if "hybrid" in components:
            raise RoutingError("hybrid cannot contain itself")
        self.components, self.options = tuple(components), dict(options or {})
        self.folds, self.step, self.seed = folds, step, seed
        self.weights = dict(weights) if weights else None  # fixed weights skip the CV fit
        self.context = StrategyContext(encoder, dict(instructions or {}))  # for components
        self.cv_trials: list[dict] = []
        self._parts: dict[str, RoutingStrategy] = {}

    @property
    def experts(self) -> list[str]:
        first = next(iter(self._parts.values()), None)
        return first.experts if first is not None else []

    def _make(self, name: str) -> RoutingStrategy:
        from routing.strategies import make_strategy

        return make_strategy(name, self.options.get(name, {}), self.context)

    def fit(self, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        if self.weights is None:
            self.weights = self._fit_weights(outcomes, embeddings)
        self._parts = {name: self._make(name) for name in self.components}
        for part in self._parts.values():
            part.fit(outcomes, embeddings)

    def _fit_weights(self, outcomes: OutcomeTable, embeddings: np.ndarray) -> dict[str, float]:
        from routing.eval.tuning import objective, out_of_fold

        z = {name: standardise(out_of_fold(lambda n=name: self._make(n), outcomes, embeddings,
                                           self.folds, self.seed))
             for name in self.components}
        self.cv_trials = []
        for combo in simplex(len(self.components), self.step):
            mixed = sum(w * z[name] for w, name in zip(combo, self.components, strict=True))
            self.cv_trials.append({"weights": combo, "cv": objective(mixed, outcomes)})
        best = max(self.cv_trials, key=lambda t: t["cv"])["weights"]
        return dict(zip(self.components, best, strict=True))

    def score(self, texts: list[str], embeddings: np.ndarray) -> Scores:
        if not self._parts:
            raise RoutingError("hybrid: not fitted (no experts); call fit() first")
        experts = self.experts
        total = np.zeros((len(texts), len(experts)), dtype=np.float32)
        explanations: list[dict] = [{"weights": dict(self.weights), "components": {}}
                                    for _ in texts]
        for name, part in self._parts.items():
            scored = part.score(texts, embeddings)
            columns = [scored.experts.index(e) for e in experts]
            total += self.weights[name] * standardise(scored.values[:, columns])
            for i, why in enumerate(scored.explanations):
                explanations[i]["components"][name] = why
        return Scores(experts=experts, values=total, explanations=explanations)

    def add_expert(self, expert: str, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        if not self._parts:
            raise RoutingError("hybrid: fit() before add_expert() (the weights need data)")
        for part in self._parts.values():
            part.add_expert(expert, outcomes, embeddings)

    def remove_expert(self, expert: str) -> None:
        for part in self._parts.values():
            part.remove_expert(expert)
