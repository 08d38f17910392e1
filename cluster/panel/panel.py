"""Run one routing decision: ask its experts concurrently, fail over, and combine their
answers into one (:class:`AnswerCombiner`).

A ``sink`` (streaming, a one-expert panel) gets the expert's text as it is generated;
a stand-in streams too unless the failed expert had already sent text (which cannot be
taken back: the final answer then differs from what was streamed, and the stream says so).

Failover: when an expert call raises or passes ``expert_timeout_s``, its share (weight)
goes to the next-best expert of the same decision (``Decision.ranked``) that is neither
used nor failed, and the switch is recorded. The user sees an error only when nobody in
the ranking could answer.

Combining, with :class:`routing.aggregate.Aggregator`: ``vote`` and ``best`` pick an
answer; ``synthesis`` asks an aggregator expert to write one from the others' responses (one
more expert call, through the same pools and batching). A synthesis that fails (the
aggregator errs or times out) falls back to the best-weighted answer and is recorded as a
failover, never an error.

Plain asyncio: the expert call is injected, so this runs without Ray in unit tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cluster.http.errors import ApiError
from cluster.http.protocol import ConclaveInfo, ExpertUse, Failover, Usage
from cluster.ops.tracing import span
from cluster.panel.sink_stream import DeltaSink
from cluster.serve.messages import ExpertReply
from experts.engine import Generation, GenerationParams
from routing.aggregate import Aggregator, synthesis_prompt
from routing.selection import Decision

log = logging.getLogger(__name__)

# expert id, prompt, sampling params[, sink=DeltaSink] -> the expert's reply (it raises
# the reply's error); with a sink, the text also goes there as it is generated
ExpertCall = Callable[..., Awaitable[ExpertReply]]


@dataclass
class Answer(ExpertReply):
    """One expert's reply as the panel uses it: which expert, the share of the panel it
    carries, and the expert it stands in for after a failover."""

    expert: str = field(default="", kw_only=True)
    weight: float = field(default=0.0, kw_only=True)
    replaces: str | None = field(default=None, kw_only=True)

    @classmethod
    def of(cls, expert: str, weight: float, reply: ExpertReply,
           replaces: str | None = None) -> Answer:
        return cls(**vars(reply), expert=expert, weight=weight, replaces=replaces)


@dataclass
class FinalAnswer(Generation):
    """The answer a request gets: the combined text, the tokens of every call made for it
    (``calls``: the panel's answers and a synthesis, booked and counted), how it was
    combined, and the logprobs and tool calls of the call whose text it is (if one is)."""

    mode: str = "single"  # "single", "vote", "synthesis", "best" or "cascade"
    aggregator: str | None = None  # the expert that synthesised, when one did
    calls: list[Answer] = field(default_factory=list)
    interrupted: bool = False  # streamed text went out that this answer does not continue
    info: ConclaveInfo | None = None  # set by the service once the answer is made

    @classmethod
    def of(cls, text: str, mode: str, calls: list[Answer], writer: Answer | None,
           finish_reason: str, aggregator: str | None = None) -> FinalAnswer:
        """``writer``: the call whose text the answer is, if one is."""
        return cls(text, sum(a.prompt_tokens for a in calls),
                   sum(a.completion_tokens for a in calls), finish_reason,
                   logprobs=writer.logprobs if writer else None,
                   tool_calls=writer.tool_calls if writer else None,
                   mode=mode, aggregator=aggregator, calls=calls)

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)


@dataclass
class PanelRun:
    answers: list[Answer]
    failovers: list[Failover] = field(default_factory=list)
    interrupted: bool = False  # a streamed call failed after sending text

    def uses(self) -> list[ExpertUse]:
        return [
            ExpertUse(id=a.expert, weight=a.weight, completion_tokens=a.completion_tokens,
                      replaces=a.replaces)
            for a in self.answers
        ]


class CallFailed(Exception):
    """An expert call failed (raised, or passed the timeout): the one-line reason."""


class ExpertClient:
    """How the panel and the aggregator ask an expert: the gateway's call under
    ``expert_timeout_s``, the reply as an :class:`Answer`. Any failure of the expert is
    raised as :class:`CallFailed`; an :class:`ApiError` (the request's own fault: no other
    expert would do) passes through."""

    def __init__(self, call: ExpertCall, timeout_s: float):
        self._call = call
        self.timeout_s = timeout_s

    async def ask(self, expert: str, weight: float, prompt: object, params: GenerationParams,
                  tap: Tap | None = None, replaces: str | None = None) -> Answer:
        try:
            reply = await asyncio.wait_for(
                self._call(expert, prompt, params, **streaming(tap)), self.timeout_s)
        except TimeoutError:
            raise CallFailed(f"timed out after {self.timeout_s:g}s") from None
        except ApiError:
            raise
        except Exception as err:  # any expert failure is failed over, not surfaced
            raise CallFailed(failure_reason(err)) from err
        return Answer.of(expert, weight, reply, replaces)


class Panel:
    """Asks a decision's experts; ``is_live(id)`` says whether an expert may get new work
    (a removed one may not)."""

    def __init__(self, client: ExpertClient, is_live: Callable[[str], bool]):
        self._client = client
        self._is_live = is_live

    async def run(self, decision: Decision, prompt: object, params: GenerationParams,
                  sink: DeltaSink | None = None) -> PanelRun:
        run = PanelRun(answers=[])
        decision = live_decision(decision, self._is_live)
        tried: set[str] = set(decision.experts)
        shares = _merge(decision.experts, decision.weights)
        tap = Tap(sink) if sink is not None and len(shares) == 1 else None
        slots = [
            self._slot(decision, expert, weight, (prompt, params, tap), run, tried)
            for expert, weight in shares
        ]
        answers = await asyncio.gather(*slots)
        run.answers = [a for a in answers if a is not None]
        if not run.answers:
            reasons = "; ".join(f"{f.expert}: {f.reason}" for f in run.failovers)
            raise ApiError(502, f"no expert could answer ({reasons or 'none available'})",
                           type="api_error", code="experts_unavailable")
        return run

    async def _slot(self, decision, expert, weight, request, run, tried) -> Answer | None:
        """One expert's share: the expert itself, else successive stand-ins."""
        prompt, params, tap = request
        current, replaces = expert, None
        while current is not None:
            reason = "expert removed"
            if self._is_live(current):
                try:
                    return await self._client.ask(current, weight, prompt, params, tap, replaces)
                except CallFailed as err:
                    reason = str(err)
            run.interrupted |= tap is not None and tap.used
            nxt = _next_candidate(decision, tried, self._is_live)
            log.warning("expert %s failed (%s); failover to %s", current, reason, nxt)
            with span("failover", **{"conclave.expert": current, "conclave.reason": reason,
                                     "conclave.replacement": nxt}):
                pass  # a marker: the stand-in's own call follows as its sibling
            run.failovers.append(Failover(expert=current, replacement=nxt, reason=reason))
            replaces = replaces or expert
            current = nxt
        return None


class Tap:
    """A sink that remembers whether anything went through it."""

    def __init__(self, sink: DeltaSink):
        self.sink = sink
        self.used = False

    def __call__(self, text: str) -> None:
        self.used = True
        self.sink(text)


def streaming(tap: Tap | None) -> dict:
    """The call's ``sink`` argument: none without a tap, or once text has gone out."""
    return {"sink": tap} if tap is not None and not tap.used else {}


def live_decision(decision: Decision, is_live: Callable[[str], bool]) -> Decision:
    """``decision`` without the experts removed since it was made (the router hears of a
    removal a moment after the gateway that acknowledged it): each one's share goes to the
    next live candidate of the ranking, as in a failover, but no call was tried, so none is
    recorded and the removed expert is never asked."""
    if all(is_live(e) for e in decision.experts):
        return decision
    used = {e for e in decision.experts if is_live(e)}
    experts, weights = [], []
    for expert, weight in zip(decision.experts, decision.weights, strict=True):
        if not is_live(expert):
            expert = _next_candidate(decision, used, is_live)
            if expert is None:
                continue
        experts.append(expert)
        weights.append(weight)
    return dataclasses.replace(decision, experts=experts, weights=weights)


def _merge(experts: list[str], weights: list[float]) -> list[tuple[str, float]]:
    """Duplicates (sampling with replacement) become one call with the summed weight."""
    merged: dict[str, float] = {}
    for expert, weight in zip(experts, weights, strict=True):
        merged[expert] = merged.get(expert, 0.0) + float(weight)
    return list(merged.items())


def _next_candidate(decision: Decision, tried: set[str], is_live) -> str | None:
    for name, _score in decision.ranked:
        if name not in tried and is_live(name):
            tried.add(name)
            return name
    return None


def failure_reason(err: Exception) -> str:
    """One readable line for a failed expert call."""
    # Ray wraps remote errors; the first line of the cause is what a reader needs.
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:300]


class AnswerCombiner:
    """Turns a :class:`PanelRun` into one answer; ``is_live`` keeps removed experts out."""

    def __init__(self, client: ExpertClient, is_live: Callable[[str], bool]):
        self._client = client
        self._is_live = is_live

    async def combine(self, query: str, decision: Decision, run: PanelRun, mode: str,
                      params: GenerationParams, sink: DeltaSink | None = None) -> FinalAnswer:
        """One answer from the panel's; with ``sink``, a synthesis streams into it."""
        answered = Decision(query=query, experts=[a.expert for a in run.answers],
                            weights=[a.weight for a in run.answers], strategy=decision.strategy,
                            ranked=decision.ranked, explanation={},
                            aggregator=decision.aggregator)
        aggregator = Aggregator(mode=mode)
        responses = [a.text for a in run.answers]
        lead = max(run.answers, key=lambda a: a.weight)
        if aggregator.mode_for(query, answered) != "synthesis":
            result = aggregator.finish(query, answered, responses)
            writer = run.answers[0] if result.mode == "single" else None
            return FinalAnswer.of(result.answer, result.mode, run.answers, writer,
                                  lead.finish_reason)
        synthesiser = aggregator.aggregator_for(answered)
        if not self._is_live(synthesiser):
            synthesiser = lead.expert
        tap = Tap(sink) if sink else None
        try:
            extra = await self._client.ask(synthesiser, 0.0, synthesis_prompt(query, responses),
                                           params, tap)
        except (CallFailed, ApiError) as err:  # the panel's answers still stand (a synthesis
            # prompt too long for the aggregator is not the request's fault)
            run.interrupted |= tap is not None and tap.used
            run.failovers.append(Failover(expert=synthesiser, replacement=None,
                                          reason=f"synthesis: {err}"))
            result = Aggregator(mode="best").finish(query, answered, responses)
            return FinalAnswer.of(result.answer, "best", run.answers, None, lead.finish_reason)
        result = aggregator.finish(query, answered, responses, extra.text, synthesiser)
        return FinalAnswer.of(result.answer, result.mode, [*run.answers, extra], extra,
                              extra.finish_reason, synthesiser)
