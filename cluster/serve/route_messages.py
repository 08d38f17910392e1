"""The messages of the gateway → router hop (pickled by Ray): one query out, one result
back. A query that cannot be routed comes back as a result carrying its
:class:`~routing.errors.RoutingError`, the same error the router raised, which the
gateway raises again (an HTTP 400); nothing changes form on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.ops.tracing import TraceContext
from routing.decision import Decision
from routing.errors import RoutingError
from routing.options import RouteOptions

CacheStatus = Literal["hit", "miss", "off"]


@dataclass(frozen=True)
class RouteQuery:
    """One query to route, with the options it is routed under."""

    query: str
    options: RouteOptions
    trace: TraceContext | None = None  # the gateway's routing span, for the router's spans


@dataclass(frozen=True)
class RouteResult:
    """The router's answer to one :class:`RouteQuery`: a decision, or the error that
    stopped it. ``routing_ms`` and ``batch_size`` describe the batch it was routed in."""

    decision: Decision | None = None
    cache: CacheStatus = "off"
    routing_ms: float = 0.0
    batch_size: int = 0
    error: RoutingError | None = None

    def __post_init__(self):
        if (self.decision is None) == (self.error is None):
            raise ValueError("a RouteResult carries a decision or an error, not both or none")

    @classmethod
    def failed(cls, error: RoutingError) -> RouteResult:
        return cls(error=error)

    def raise_error(self) -> RouteResult:
        """This result, unless it carries an error: that is raised."""
        if self.error is not None:
            raise self.error
        return self


__all__ = ["CacheStatus", "RouteQuery", "RouteResult"]
