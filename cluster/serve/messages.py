"""The messages of Conclave's two Ray hops (pickled by Ray), one typed message each way.

Gateway → router: one :class:`RouteQuery` out, one :class:`RouteResult` back. Gateway →
pool: one :class:`ExpertRequest` per generation out, one :class:`ExpertReply` back (a list
of each for a coalesced batch; a streamed call yields text deltas, then its reply).

A failure travels as the error itself, inside the result: the :class:`RoutingError` the
router raised, or the :class:`ExpertError` of the pool (the error it raised when it is one —
a prompt too long, a feature the engine lacks: the request's fault — else one that names the
expert and the original error). The gateway raises it again; nothing changes form on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from cluster.ops.tracing import TraceContext
from experts.engine import Generation, GenerationParams
from experts.errors import ExpertError, PromptTooLongError, UnsupportedFeatureError
from routing.errors import RoutingError
from routing.options import RouteOptions
from routing.selection import Decision

CacheStatus = Literal["hit", "miss", "off"]


@dataclass
class HopResult:
    """What comes back over a hop: the value, or (``error``) what stopped it."""

    error: Exception | None = field(default=None, kw_only=True)

    def raise_error(self):
        """This result, unless it carries an error: that is raised."""
        if self.error is not None:
            raise self.error
        return self


@dataclass(frozen=True)
class RouteQuery:
    """One query to route, with the options it is routed under."""

    query: str
    options: RouteOptions
    trace: TraceContext | None = None  # the gateway's routing span, for the router's spans


@dataclass
class RouteResult(HopResult):
    """The router's answer to one :class:`RouteQuery`: a decision, or the error that
    stopped it. ``routing_ms`` and ``batch_size`` describe the batch it was routed in."""

    decision: Decision | None = None
    cache: CacheStatus = "off"
    routing_ms: float = 0.0
    batch_size: int = 0

    def __post_init__(self):
        if (self.decision is None) == (self.error is None):
            raise ValueError("a RouteResult carries a decision or an error, not both or none")

    @classmethod
    def failed(cls, error: RoutingError) -> RouteResult:
        return cls(error=error)

Prompt = str | list[dict]  # a plain prompt, or OpenAI chat messages
REQUEST_FAULTS = (PromptTooLongError, UnsupportedFeatureError)  # HTTP 400, no failover


@dataclass(frozen=True)
class ExpertRequest:
    """One generation: the expert, its prompt, the request's sampling overrides and output
    features (``max_tokens``, ``temperature``, ``response_format``, ...; unset ones
    take the expert's defaults), and the gateway's span for the call."""

    expert: str
    prompt: Prompt
    params: GenerationParams = field(default_factory=GenerationParams)
    trace: TraceContext | None = None


@dataclass(frozen=True)
class BatchStats:
    """The batch a reply was generated in; only the first reply of a batch carries its size,
    seconds and the model loads the replica did since its previous batch."""

    batch_size: int = 0
    seconds: float = 0.0
    loads: tuple[float, ...] = ()


@dataclass
class ExpertReply(Generation, HopResult):
    """The answer to one :class:`ExpertRequest`: the engine's :class:`Generation` itself
    (``no_record``: a replay engine had none, counted by the gateway; ``tool_calls``: found
    by the expert's tool parser), with the batch it ran in; or the error that stopped it."""

    text: str = ""
    finish_reason: str = "stop"
    stats: BatchStats = field(default_factory=BatchStats, kw_only=True)

    @classmethod
    def of(cls, out: Generation) -> ExpertReply:
        """``out`` as it crosses the hop (its per-token routing trace stays in the pool)."""
        return cls(**{**vars(out), "token_trace": None})

    @classmethod
    def failed(cls, expert: str, err: Exception) -> ExpertReply:
        """The reply of a request that could not run."""
        if not isinstance(err, REQUEST_FAULTS):
            err = ExpertError(f"expert {expert!r}: {type(err).__name__}: {err}")
        return cls(error=err)

    @property
    def request_fault(self) -> bool:
        """The request itself was at fault (HTTP 400): another expert would fail it too."""
        return isinstance(self.error, REQUEST_FAULTS)

    def with_stats(self, stats: BatchStats) -> ExpertReply:
        return replace(self, stats=stats)


__all__ = ["BatchStats", "CacheStatus", "HopResult", "ExpertReply", "ExpertRequest", "Prompt", "RouteQuery",
           "RouteResult"]
