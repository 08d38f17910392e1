"""What the router decides for one query, and the per-request options that steer it.

Options can ride in the OpenAI ``model`` string so a stock client can drive them:
``conclave:k=3,strategy=skills,cost=0.2,sample=true,seed=7``, or an adaptive panel:
``conclave:k=auto,k_mass=0.8,k_max=3`` (see :mod:`routing.calibration`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from routing.strategies.base import RoutingError

MODEL_PREFIX = "conclave"
# Model-string key → RouteOptions field.
_KEYS = {"k": "k", "strategy": "strategy", "cost": "cost_weight", "cost_weight": "cost_weight",
         "sample": "sample", "seed": "seed", "k_mass": "k_mass", "k_max": "k_max"}
_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


class RouteOptions(BaseModel):
    """Per-request routing options; ``None`` fields fall back to the router's defaults."""

    model_config = ConfigDict(extra="forbid")

    k: Annotated[int, Field(ge=1, le=16)] | Literal["auto"] = Field(
        3, description="Experts recruited for the query (1..16), or 'auto': recruit until "
        "their calibrated mass reaches k_mass, at most k_max.")
    k_mass: float = Field(0.8, gt=0.0, le=1.0, description="k=auto: mass to reach.")
    k_max: int = Field(3, ge=1, le=16, description="k=auto: most experts recruited.")
    strategy: str | None = Field(None, description="Strategy name; None: the router's default.")
    cost_weight: float = Field(0.0, ge=0.0, description="λ in score − λ·cost (costs normalised).")
    sample: bool = Field(False, description="Sample k experts by weight instead of top-k.")
    seed: int | None = Field(None, description="Seed for sampling; None: derived from the query.")

    @classmethod
    def parse_model_string(cls, model: str) -> RouteOptions:
        """Parse ``conclave[:key=value,...]``; bad keys or values raise :class:`RoutingError`
        naming the valid ones."""
        prefix, _, rest = model.strip().partition(":")
        if prefix != MODEL_PREFIX:
            raise RoutingError(f"model {model!r}: routed models start with {MODEL_PREFIX!r}")
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, eq, raw = item.partition("=")
            key = key.strip().lower()
            if not eq or key not in _KEYS:
                raise RoutingError(
                    f"model {model!r}: bad option {item!r}; valid keys: {', '.join(sorted(_KEYS))}"
                )
            values[_KEYS[key]] = _convert(_KEYS[key], raw.strip(), model)
        try:
            return cls(**values)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
            )
            raise RoutingError(f"model {model!r}: {problems}") from None


def _convert(name: str, raw: str, model: str) -> Any:
    try:
        if name == "k" and raw.lower() == "auto":
            return "auto"
        if name in ("k", "k_max") and not 1 <= int(raw) <= 16:
            raise ValueError(raw)
        if name in ("k", "seed", "k_max"):
            return int(raw)
        if name == "k_mass":
            return float(raw)
        if name == "cost_weight":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        if name == "sample":
            return _BOOLS[raw.lower()]
        if not raw:
            raise ValueError(raw)
        return raw
    except (ValueError, KeyError):
        kinds = {"k": "an integer 1..16 or 'auto'", "seed": "an integer",
                 "k_mass": "a number in (0, 1]", "k_max": "an integer 1..16",
                 "cost_weight": "a number >= 0",
                 "sample": "true/false", "strategy": "a strategy name"}
        raise RoutingError(f"model {model!r}: {name}={raw!r} must be {kinds[name]}") from None


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


__all__ = ["Decision", "RouteOptions", "MODEL_PREFIX"]
