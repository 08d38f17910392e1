"""The routing layer's one error type."""

from __future__ import annotations


class RoutingError(ValueError):
    """Bad routing input (empty query, unknown strategy or expert, bad options); the HTTP
    layer maps it to a 400 with its message."""


__all__ = ["RoutingError"]
