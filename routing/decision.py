"""What the router decides for one query (the options that steer it:
:mod:`routing.options`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from routing.errors import RoutingError


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


__all__ = ["Decision"]
