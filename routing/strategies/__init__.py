"""Routing strategies, one file each, and the name → class registry that drives config
validation and CLI choices. Unknown names raise and list the valid ones.

Register a strategy with one line in ``_PATHS`` (``name: "module:Class"``). Classes are
imported on first access, so this package never imports its strategies (or their
dependencies: the encoder, the index) just because someone needs ``RoutingError``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from routing.strategies.base import RoutingError, RoutingStrategy, Scores

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

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


STRATEGIES: Mapping[str, type[RoutingStrategy]] = StrategyRegistry(_PATHS)


def make_strategy(name: str, **kwargs) -> RoutingStrategy:
    """A new, unfitted strategy ``name`` built with ``kwargs``."""
    if name not in STRATEGIES:
        raise RoutingError(
            f"unknown routing strategy {name!r}; valid: {', '.join(sorted(STRATEGIES)) or 'none'}"
        )
    try:
        return STRATEGIES[name](**kwargs)
    except TypeError as err:
        raise RoutingError(f"strategy {name!r}: bad options: {err}") from None


__all__ = ["STRATEGIES", "RoutingError", "RoutingStrategy", "Scores", "make_strategy"]
