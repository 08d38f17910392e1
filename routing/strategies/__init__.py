"""Routing strategies, one file each, and the name → class registry that drives config
validation and CLI choices. Unknown names raise and list the valid ones.

Register a strategy with one line in ``_PATHS`` (``name: "module:Class"``); what it must
implement and declare is in :mod:`routing.strategies.base`. Classes are
imported on first access, so this package never imports its strategies (or their
dependencies: the encoder, the index) just because someone needs the registry's names.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from routing.errors import RoutingError
from routing.strategies.base import RoutingStrategy, Scores, StrategyContext

_PATHS = {
    "skills": "routing.strategies.skills:SkillsStrategy",
    "skills-paper": "routing.strategies.skills:PaperSkillsStrategy",
    "glider": "routing.strategies.glider:GliderStrategy",
    "knn": "routing.strategies.knn:KNNStrategy",
    "pilots": "routing.strategies.pilots:PilotStrategy",
    "hybrid": "routing.strategies.hybrid:HybridStrategy",
    "contrastive": "routing.strategies.contrastive:ContrastiveStrategy",
}


class StrategyRegistry(Mapping):
    """name → strategy class, imported on first access."""

    def __init__(self, paths: dict[str, str]):
        self._paths = paths

    def __getitem__(self, name: str) -> type[RoutingStrategy]:
        module, _, cls = self._paths[name].partition(":")
        return getattr(importlib.import_module(module), cls)

    def __contains__(self, name: object) -> bool:  # Mapping's own would import the class
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


STRATEGIES: Mapping[str, type[RoutingStrategy]] = StrategyRegistry(_PATHS)


def make_strategy(name: str, options: dict[str, Any] | None = None,
                  context: StrategyContext | None = None) -> RoutingStrategy:
    """A new, unfitted strategy ``name`` with ``options`` (its constructor's own arguments)
    and, from ``context``, what it declares in ``needs``."""
    if name not in STRATEGIES:
        raise RoutingError(
            f"unknown routing strategy {name!r}; valid: {', '.join(sorted(STRATEGIES)) or 'none'}"
        )
    cls = STRATEGIES[name]
    options = dict(options or {})
    clash = sorted(set(options) & set(cls.needs))
    if clash:
        raise RoutingError(f"strategy {name!r}: {clash} come from the router, not options")
    context = context or StrategyContext()
    try:
        return cls(**options, **{need: getattr(context, need) for need in cls.needs})
    except TypeError as err:
        raise RoutingError(f"strategy {name!r}: bad options: {err}") from None


def check_strategy(name: str, options: dict[str, Any] | None = None) -> None:
    """Raise :class:`RoutingError` naming the valid strategies when ``name`` is unknown, or
    saying what is wrong with ``options`` (the strategy is built, not fitted, to check)."""
    make_strategy(name, options)


__all__ = ["STRATEGIES", "RoutingStrategy", "Scores", "StrategyContext", "check_strategy",
           "make_strategy"]
