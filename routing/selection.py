"""What the router decides for a query (:class:`Decision`), and the one place where
strategy scores become decisions (:func:`select`; the options that steer it:
:mod:`routing.options`).

Per query: cost penalty, then deterministic top-k or seeded sampling, then weights; a
fallback when the strategy has no opinion at all (every score NaN). ``k="auto"`` sizes the
panel from the calibrated scores (:mod:`routing.calibration`) and weighs it by them.

Cost penalty: ``final = score − λ · (cost / max cost) · spread`` where ``spread`` is the
query's score range (max − min over scored experts). Dividing by the largest cost puts
costs in [0, 1]; scaling by the spread makes λ mean the same for every strategy whatever
its score units: at λ = 1 the priciest expert loses as much as the whole gap between the
best and the worst expert.

Guard (:mod:`routing.guard`): with ``defaults`` (each query's default expert) and a
``margin``, the top expert after the cost penalty replaces the query's default only when it
leads it by more than the margin; else the default goes first and the explanation says so.

Weights: the positive part of the selected experts' final scores, normalised (uniform
when none is positive). Sampling (Symbolic-MoE) draws k experts *with replacement* with
probability proportional to that positive part, so an expert may appear twice; each draw
carries weight 1/k.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from routing.calibration import DEFAULT_TEMPERATURE, distribution, panel_sizes
from routing.errors import RoutingError
from routing.guard import guarded
from routing.options import RouteOptions
from routing.strategies.base import Scores


@dataclass
class Decision:
    """The experts recruited for one query and why.

    ``ranked``: every candidate by final score (after the cost penalty), best first;
    failover walks it. ``weights`` sum to 1 over ``experts`` (duplicates possible when
    sampling with replacement).
    """

    query: str
    experts: list[str]
    weights: list[float]
    strategy: str
    ranked: list[tuple[str, float]]
    explanation: dict
    aggregator: str | None = None
    cached: bool = False

    def to_dict(self) -> dict:
        """A JSON-safe dict (numpy values become plain Python, NaN becomes None)."""
        data = asdict(self)
        data["ranked"] = [[name, score] for name, score in self.ranked]
        return _json_safe(data)

    @classmethod
    def from_dict(cls, data: dict) -> Decision:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                query=str(data["query"]),
                experts=[str(e) for e in data["experts"]],
                weights=[float(w) for w in data["weights"]],
                strategy=str(data["strategy"]),
                ranked=[(str(n), float("nan") if s is None else float(s))
                        for n, s in data["ranked"]],
                explanation=dict(data.get("explanation") or {}),
                aggregator=data.get("aggregator"),
                cached=bool(data.get("cached", False)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise RoutingError(f"not a routing decision: {err!r}") from None


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


Guarding = tuple[list[str], float]  # each query's default expert, and the margin


def select(
    queries: list[str],
    scores: Scores,
    options: RouteOptions,
    strategy: str,
    costs: dict[str, float] | None = None,
    prior: dict[str, float] | None = None,
    temperature: float | None = None,
    guard: Guarding | None = None,
) -> list[Decision]:
    """One decision per query from ``scores`` (rows = queries, columns = experts).
    ``temperature``: the strategy's calibration for ``k="auto"`` (see
    :mod:`routing.calibration`; None: its default). ``guard``: (each query's default
    expert, the margin), or None: no guard."""
    values = np.asarray(scores.values, dtype=np.float64)
    if values.shape != (len(queries), len(scores.experts)):
        raise RoutingError(
            f"strategy {strategy!r} returned scores of shape {values.shape}, "
            f"expected ({len(queries)}, {len(scores.experts)})"
        )
    if not scores.experts:
        raise RoutingError(f"strategy {strategy!r} knows no experts; add one first")
    cost = _normalised_costs(scores.experts, costs or {})
    fallback = _prior_row(scores.experts, prior or {})
    defaults, margin = guard if guard is not None else ([None] * len(queries), np.inf)
    return [
        _decide(query, values[i], scores, i, options, strategy, (cost, fallback, temperature),
                (defaults[i], margin))
        for i, query in enumerate(queries)
    ]


def _decide(query, row, scores, i, options, strategy, context, guard) -> Decision:
    cost, fallback, temperature = context
    explanation = dict(scores.explanations[i]) if i < len(scores.explanations) else {}
    if np.isnan(row).all():
        row = fallback
        explanation["fallback"] = "no expert scored; ranked by prior (mean validation score)"
    final = penalise(row, cost, options.cost_weight)
    if guard[0] is not None:
        final, explanation["guard"] = _guard(final, scores.experts, *guard)
    order = _rank(final)
    ranked = [(scores.experts[j], float(final[j])) for j in order]
    scored = [j for j in order if not np.isnan(final[j])]
    k, mass = panel_size(final[scored], options, temperature)
    if options.sample:
        seed = options.seed if options.seed is not None else _query_seed(query)
        picks = _sample(final, scored, k, np.random.default_rng(seed))
        weights = [1.0 / len(picks)] * len(picks)
    else:
        picks = scored[:k]
        weights = _weights(final[picks]) if mass is None else _weights(mass[:k])
    explanation["selection"] = {
        "mode": "sample" if options.sample else "top-k",
        "k": options.k if options.k not in ("auto", "cascade") else {
            options.k: k, "k_mass": options.k_mass, "k_max": options.k_max},
        "cost_weight": options.cost_weight,
    }
    explanation["options"] = options.decision_fields()
    return Decision(
        query=query,
        experts=[scores.experts[j] for j in picks],
        weights=weights,
        strategy=strategy,
        ranked=ranked,
        explanation=explanation,
    )


def _guard(final: np.ndarray, experts: list[str], default: str,
           margin: float) -> tuple[np.ndarray, dict]:
    """``final`` with ``default`` first unless the top expert leads it by more than
    ``margin``, and what the guard did (the decision's explanation)."""
    column = experts.index(default) if default in experts else -1
    top = experts[_rank(final)[0]]
    guarded_row, held = guarded(final[None, :], np.array([column]), margin)
    why = {"default": default, "margin": None if np.isinf(margin) else margin,
           "held_back": bool(held[0]) and top != default}
    if column >= 0 and why["held_back"]:
        lead = float(final[experts.index(top)] - final[column])
        why["note"] = (f"held back: {top} leads the default by {lead:.3g}, not more than "
                       f"the margin the evidence backs ({why['margin']})")
        why["top"] = top
    return guarded_row[0], why


def panel_size(ordered: np.ndarray, options: RouteOptions,
               temperature: float | None) -> tuple[int, np.ndarray | None]:
    """(experts to recruit, their calibrated probabilities or None) for scores ``ordered``
    best first: ``options.k``, for ``k="auto"`` the smallest panel whose mass reaches
    ``k_mass`` (at most ``k_max``), for ``k="cascade"`` the ``k_max`` candidates, best first,
    that the cascade asks in turn while the answers are unsure."""
    if options.k == "cascade":
        return options.k_max, None
    if options.k != "auto":
        return options.k, None
    if not len(ordered):
        return 1, None
    probabilities = distribution(ordered, temperature or DEFAULT_TEMPERATURE)[0]
    return int(panel_sizes(probabilities, options.k_mass, options.k_max)[0]), probabilities


def penalise(row: np.ndarray, cost: np.ndarray, cost_weight: float) -> np.ndarray:
    """``row − λ · cost · spread`` (see module doc); NaN stays NaN."""
    if cost_weight == 0.0 or not np.isfinite(row).any():
        return row.astype(np.float64)
    finite = row[np.isfinite(row)]
    spread = float(finite.max() - finite.min()) or max(abs(float(finite.max())), 1.0)
    return row - cost_weight * cost * spread


def _rank(final: np.ndarray) -> list[int]:
    # Best first, NaN last; ties keep column order (stable), so decisions are deterministic.
    key = np.where(np.isnan(final), np.inf, -final)
    return [int(j) for j in np.argsort(key, kind="stable")]


def _sample(final: np.ndarray, scored: list[int], k: int, rng) -> list[int]:
    mass = np.clip(final[scored], 0.0, None)
    probs = mass / mass.sum() if mass.sum() > 0 else np.full(len(scored), 1.0 / len(scored))
    draws = rng.choice(len(scored), size=k, replace=True, p=probs)
    return [scored[d] for d in draws]


def _weights(selected: np.ndarray) -> list[float]:
    mass = np.clip(selected, 0.0, None)
    if mass.sum() <= 0:
        return [1.0 / len(selected)] * len(selected)
    return [float(w) for w in mass / mass.sum()]


def _normalised_costs(experts: list[str], costs: dict[str, float]) -> np.ndarray:
    cost = np.array([float(costs.get(name, 0.0)) for name in experts], dtype=np.float64)
    if (cost < 0).any() or not np.isfinite(cost).all():
        raise RoutingError(f"costs must be finite and >= 0: {costs}")
    top = cost.max() if cost.size else 0.0
    return cost / top if top > 0 else cost


def _prior_row(experts: list[str], prior: dict[str, float]) -> np.ndarray:
    # Without a prior every expert ties at 0 and column order decides, deterministically.
    row = np.array([float(prior.get(name, 0.0)) for name in experts], dtype=np.float64)
    return np.nan_to_num(row, nan=0.0)


def _query_seed(query: str) -> int:
    # The same query samples the same experts in every replica (Python's hash() is salted).
    return int.from_bytes(hashlib.sha1(query.encode("utf-8")).digest()[:8], "little")
