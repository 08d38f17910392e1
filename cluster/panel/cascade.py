"""``k: cascade``: ask the decision's experts one at a time, best first, and stop at the
first answer confident enough; the kept answer is the most confident one asked.

Confidence: the mean log-probability of the answer's tokens, from the engine's logprobs (so
an engine without them, such as replay, cannot take part: a 400 naming the expert). An
answer at or above ``threshold`` stops the cascade; otherwise the next expert of the
ranking is asked, at most as many as the decision holds (``k_max``). A failed expert is
skipped and recorded as a failover. The kept answer is streamed once it is chosen (an
answer that may be discarded never goes out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.http.errors import ApiError
from cluster.http.protocol import CascadeStep, Failover
from cluster.panel.panel import Answer, CallFailed, ExpertClient
from experts.engine import GenerationParams
from routing.selection import Decision


@dataclass
class CascadeRun:
    """The answers asked for, in order, with their confidences; ``kept`` indexes them."""

    answers: list[Answer] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return max(range(len(self.answers)), key=lambda i: self.confidences[i])

    def steps(self) -> list[CascadeStep]:
        return [CascadeStep(expert=a.expert, confidence=c, kept=i == self.kept)
                for i, (a, c) in enumerate(zip(self.answers, self.confidences, strict=True))]


def outcome(confidences: list[float], threshold: float) -> tuple[int, int]:
    """(answers asked, index of the kept one) of a cascade whose candidates would answer with
    ``confidences``, in order: the rule :func:`run_cascade` follows, for offline replay."""
    asked = next((i + 1 for i, c in enumerate(confidences) if c >= threshold),
                 len(confidences))
    kept = max(range(asked), key=lambda i: confidences[i])
    return asked, kept


def confidence(logprobs: list[dict] | None) -> float | None:
    """Mean token log-probability of an answer (None: the engine gave no logprobs)."""
    if logprobs is None:
        return None
    values = [float(step["logprob"]) for step in logprobs if step.get("logprob") is not None]
    return sum(values) / len(values) if values else float("-inf")


async def run_cascade(client: ExpertClient, decision: Decision, prompt: object, params: GenerationParams,
                      threshold: float, is_live: Callable[[str], bool]) -> CascadeRun:
    """Ask ``decision.experts`` in turn until an answer reaches ``threshold``."""
    asking = params.model_copy(update={"logprobs": params.logprobs or 0})  # the chosen tokens' own
    run = CascadeRun()
    for expert in (e for e in dict.fromkeys(decision.experts) if is_live(e)):
        try:
            answer = await client.ask(expert, 1.0, prompt, asking)
        except CallFailed as err:
            run.failovers.append(Failover(expert=expert, replacement=None, reason=str(err)))
            continue
        except ApiError as err:  # the request's own fault; an engine without logprobs says so
            if "logprobs" in str(err):
                raise _no_confidence(expert, str(err)) from None
            raise
        sure = confidence(answer.logprobs)
        if sure is None:
            raise _no_confidence(expert, "its engine returned no logprobs")
        run.answers.append(answer)
        run.confidences.append(sure)
        if sure >= threshold:
            break
    if not run.answers:
        reasons = "; ".join(f"{f.expert}: {f.reason}" for f in run.failovers)
        raise ApiError(502, f"no expert could answer ({reasons or 'none available'})",
                       type="api_error", code="experts_unavailable")
    return run


def _no_confidence(expert: str, why: str) -> ApiError:
    return ApiError(400, f"k: cascade needs the confidence (token logprobs) of each answer; "
                    f"expert {expert!r} cannot give it: {why}", param="model",
                    code="invalid_value")
