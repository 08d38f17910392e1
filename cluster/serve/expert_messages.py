"""The messages of the gateway → pool hop (pickled by Ray): one :class:`ExpertRequest` per
generation out, one :class:`ExpertReply` back (a list of each for a coalesced batch; a
streamed call yields text deltas, then its reply).

A request that could not be answered comes back as a reply carrying an
:class:`~experts.errors.ExpertError`: the error the pool raised when it is one (a prompt too
long, a feature the engine lacks: the request's fault), else one that names the expert and
the original error. The gateway raises it again; nothing changes form on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cluster.ops.tracing import TraceContext
from experts.engine import Generation
from experts.errors import ExpertError, PromptTooLongError, UnsupportedFeatureError

Prompt = str | list[dict]  # a plain prompt, or OpenAI chat messages
REQUEST_FAULTS = (PromptTooLongError, UnsupportedFeatureError)  # HTTP 400, no failover


@dataclass(frozen=True)
class ExpertRequest:
    """One generation: the expert, its prompt, the request's sampling overrides and output
    features (``max_new_tokens``, ``temperature``, ``response_format``, ...; unset ones
    take the expert's defaults), and the gateway's span for the call."""

    expert: str
    prompt: Prompt
    params: dict = field(default_factory=dict)
    trace: TraceContext | None = None


@dataclass(frozen=True)
class BatchStats:
    """The batch a reply was generated in; only the first reply of a batch carries its size,
    seconds and the model loads the replica did since its previous batch."""

    batch_size: int = 0
    seconds: float = 0.0
    loads: tuple[float, ...] = ()


@dataclass(frozen=True)
class ExpertReply:
    """The answer to one :class:`ExpertRequest`, or the error that stopped it."""

    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    logprobs: list[dict] | None = None
    no_record: bool = False  # a replay engine had no recorded answer (counted by the gateway)
    tool_calls: list[dict] | None = None  # found by the expert's tool parser (tool_choice auto)
    error: ExpertError | None = None
    stats: BatchStats = BatchStats()

    @classmethod
    def of(cls, out: Generation) -> ExpertReply:
        return cls(text=out.text, prompt_tokens=out.prompt_tokens,
                   completion_tokens=out.completion_tokens, finish_reason=out.finish_reason,
                   logprobs=out.logprobs, no_record=out.no_record, tool_calls=out.tool_calls)

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

    def raise_error(self) -> ExpertReply:
        """This reply, unless it carries an error: that is raised."""
        if self.error is not None:
            raise self.error
        return self


__all__ = ["BatchStats", "ExpertReply", "ExpertRequest", "Prompt"]
