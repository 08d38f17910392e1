"""From the panel's answers to one reply, with :class:`routing.aggregate.Aggregator`:
``vote`` and ``best`` pick an answer; ``synthesis`` asks an aggregator expert to write one
from the others' responses (one more expert call, through the same pools and batching).

A synthesis that fails (the aggregator errs or times out) falls back to the best-weighted
answer and is recorded as a failover, never an error to the user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cluster.http.errors import ApiError
from cluster.http.protocol import Failover
from cluster.panel.panel import Answer, CallFailed, ExpertClient, PanelRun, Tap
from cluster.panel.sink_stream import DeltaSink
from routing.aggregate import Aggregator, synthesis_prompt
from routing.decision import Decision


@dataclass
class Combined:
    text: str
    finish_reason: str
    mode: str  # "single", "vote", "synthesis" or "best"
    aggregator: str | None  # the expert that synthesised, when one did
    extra: Answer | None = None  # the synthesis call's own answer (for usage)


class AnswerCombiner:
    """Turns a :class:`PanelRun` into one answer; ``is_live`` keeps removed experts out."""

    def __init__(self, client: ExpertClient, is_live: Callable[[str], bool]):
        self._client = client
        self._is_live = is_live

    async def combine(self, query: str, decision: Decision, run: PanelRun, mode: str,
                      params: dict, sink: DeltaSink | None = None) -> Combined:
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
            return Combined(result.answer, lead.finish_reason, result.mode, None)
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
            return Combined(result.answer, lead.finish_reason, "best", None)
        result = aggregator.finish(query, answered, responses, extra.text, synthesiser)
        return Combined(result.answer, extra.finish_reason, result.mode, synthesiser, extra)
