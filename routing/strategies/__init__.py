"""Routing strategies, one file each, and the name → class registry that drives config
validation and CLI choices. Unknown names raise and list the valid ones."""

from __future__ import annotations

from routing.strategies.base import RoutingError, RoutingStrategy, Scores

STRATEGIES: dict[str, type[RoutingStrategy]] = {}


def make_strategy(name: str, **kwargs) -> RoutingStrategy:
    """A new, unfitted strategy ``name`` built with ``kwargs``."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise RoutingError(
            f"unknown routing strategy {name!r}; valid: {', '.join(sorted(STRATEGIES)) or 'none'}"
        )
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise RoutingError(f"strategy {name!r}: bad options: {err}") from None


__all__ = ["STRATEGIES", "RoutingError", "RoutingStrategy", "Scores", "make_strategy"]
