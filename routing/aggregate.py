"""From k expert answers to one, as Symbolic-MoE does.

- ``synthesis``: an aggregator model reads the question and the experts' responses (the
  text after ``</think>`` only: reasoning stays private) and writes one answer; one batched
  ``generate`` per aggregator in the batch job (the plan's aggregator pass).
- ``vote`` (multiple choice): majority over the letters the responses commit to, ties to
  the highest-weighted expert; no model call.
- ``best``: the highest-weighted expert's response; no model call.
- ``auto``: ``vote`` when the question lists lettered options, else ``synthesis``.
- One distinct expert (k=1) skips aggregation whatever the mode.

The aggregator of a row is, in order: the decision's own ``aggregator`` (set by the router
and the batch job from the probe's stored choice, below), the one
chosen for the row's domain, the fallback (highest global competence), else the row's
highest-weighted expert.

The stored choice (:class:`AggregatorStore`): the aggregators the probe chose
(:func:`select_aggregators`), kept in Redis so the router applies them per query and the
batch job picks them up. One JSON value at ``{ns}:aggregators``. The task of a query is the
domain of its best-weighted expert (the spec's ``domain``, else the expert's id); its
aggregator is the one chosen for that task when that expert is live, else the fallback when
live, else none (the answer combiner then uses the best-weighted expert, as without a
choice).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import redis

from experts.redis_conn import RedisBreaker, RedisUnavailable
from routing.errors import RoutingError
from routing.outcomes import OutcomeTable
from routing.scoring import extract_choice, score_answer
from routing.selection import Decision

log = logging.getLogger(__name__)
MODES = ("auto", "vote", "synthesis", "best")
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[\)\.:]\s+\S", re.M)
SYNTHESIS_INSTRUCTION = (
    "You have been given responses from several expert models to the question below. "
    "Some of them may be wrong. Critically evaluate them and write one accurate, complete "
    "answer to the question. Do not mention the other responses."
)


def strip_thinking(text: str) -> str:
    """The text after the last ``</think>``; empty when a ``<think>`` block never closed
    (the model ran out of tokens mid-reasoning)."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1].strip()
    if "<think>" in text:
        return ""
    return text.strip()


def is_multiple_choice(question: str) -> bool:
    """Whether the question lists at least two lettered options (``A) …``, ``(B) …``)."""
    return len(set(_OPTION_LINE.findall(question))) >= 2


def synthesis_prompt(question: str, responses: Sequence[str]) -> list[dict]:
    """The aggregator's chat prompt: instruction, every response (thinking stripped),
    then the question."""
    parts = [SYNTHESIS_INSTRUCTION, ""]
    for i, response in enumerate(responses, start=1):
        parts += [f"Response {i}:", strip_thinking(response) or "(no answer)", ""]
    parts += ["Question:", question]
    return [{"role": "user", "content": "\n".join(parts)}]


def vote(responses: Sequence[str], weights: Sequence[float]) -> tuple[str | None, int]:
    """Majority letter over ``responses`` and the index of the response returned for it
    (the highest-weighted one that chose it). Ties go to the letter of the
    highest-weighted expert among the tied; no letter at all: (None, best-weighted)."""
    if len(responses) != len(weights) or not responses:
        raise RoutingError(f"vote needs one weight per response, got {len(responses)} "
                           f"responses and {len(weights)} weights")
    letters = [extract_choice(strip_thinking(text)) for text in responses]
    by_weight = sorted(range(len(responses)), key=lambda i: -weights[i])  # stable on ties
    counts: dict[str, int] = {}
    for letter in letters:
        if letter is not None:
            counts[letter] = counts.get(letter, 0) + 1
    if not counts:
        return None, by_weight[0]
    top = max(counts.values())
    for i in by_weight:
        if letters[i] is not None and counts[letters[i]] == top:
            return letters[i], i
    raise AssertionError("unreachable: some letter has the top count")


@dataclass
class Aggregated:
    """One row's final answer and how it was made."""

    answer: str
    mode: str  # "single", "vote", "synthesis" or "best"
    aggregator: str | None  # the expert that synthesised, when one did


@dataclass
class Aggregator:
    """Chooses per row how answers are combined and by whom (see module doc)."""

    mode: str = "auto"
    by_domain: dict[str, str] = field(default_factory=dict)
    fallback: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RoutingError(f"unknown aggregation mode {self.mode!r}; valid: {MODES}")

    def mode_for(self, question: str, decision: Decision) -> str:
        """``single``, ``vote``, ``synthesis`` or ``best`` for one row."""
        if len(set(decision.experts)) <= 1:
            return "single"
        if self.mode == "auto":
            return "vote" if is_multiple_choice(question) else "synthesis"
        return self.mode

    def aggregator_for(self, decision: Decision, domain: str | None = None) -> str:
        """The expert that synthesises this row's answers."""
        if decision.aggregator:
            return decision.aggregator
        if domain is not None and domain in self.by_domain:
            return self.by_domain[domain]
        return self.fallback or best_weighted(decision)

    def assign(self, questions: Sequence[str], decisions: Sequence[Decision],
               domains: Sequence[str | None] | None = None) -> list[str | None]:
        """Per row, the aggregator to run in the plan's aggregator pass (None: no call)."""
        domains = domains or [None] * len(questions)
        return [self.aggregator_for(d, dom) if self.mode_for(q, d) == "synthesis" else None
                for q, d, dom in zip(questions, decisions, domains, strict=True)]

    def finish(self, question: str, decision: Decision, responses: Sequence[str],
               synthesized: str | None = None, aggregator: str | None = None) -> Aggregated:
        """The final answer of one row from its experts' ``responses`` (one per entry of
        ``decision.experts``) and, in synthesis mode, the aggregator's output."""
        mode = self.mode_for(question, decision)
        if mode == "synthesis" and synthesized is not None:
            return Aggregated(strip_thinking(synthesized), mode, aggregator)
        if mode == "vote":
            _, index = vote(responses, decision.weights)
            return Aggregated(strip_thinking(responses[index]), mode, None)
        best = max(range(len(responses)), key=lambda i: decision.weights[i])
        return Aggregated(strip_thinking(responses[best]), "single" if mode == "single"
                          else "best", None)


def best_weighted(decision: Decision) -> str:
    """The expert with the largest weight in ``decision`` (the first of equals)."""
    return decision.experts[int(np.argmax(decision.weights))]


# -- choosing aggregators: the probe ---------------------------------------------------------
@dataclass
class Probe:
    """One probe question: its domain, the gold answer and three shuffled responses
    (one correct, two wrong) taken from validation outputs."""

    domain: str
    question: str
    gold: str
    responses: list[str]


def build_probes(outcomes: OutcomeTable, per_domain: int = 20, seed: int = 0) -> list[Probe]:
    """Up to ``per_domain`` probes per domain from questions where some expert answered
    right and two answered differently wrong (``outcomes.predictions`` needed)."""
    if outcomes.predictions is None:
        raise RoutingError("building aggregator probes needs validation predictions")
    rng = random.Random(seed)
    probes: list[Probe] = []
    taken: dict[str, int] = {}
    for i in rng.sample(range(len(outcomes)), len(outcomes)):
        domain = outcomes.domains[i]
        if taken.get(domain, 0) >= per_domain:
            continue
        probe = _probe(outcomes, i, rng)
        if probe is not None:
            probes.append(probe)
            taken[domain] = taken.get(domain, 0) + 1
    return probes


def _probe(outcomes: OutcomeTable, i: int, rng: random.Random) -> Probe | None:
    scores, preds = outcomes.scores[i], outcomes.predictions[i]
    right = [str(p) for s, p in zip(scores, preds, strict=True) if s == 1 and p]
    wrong = list(dict.fromkeys(str(p) for s, p in zip(scores, preds, strict=True)
                               if s == 0 and p and p not in right))
    if not right or len(wrong) < 2:
        return None
    responses = [rng.choice(right), *rng.sample(wrong, 2)]
    rng.shuffle(responses)
    gold = (outcomes.answers[i] if outcomes.answers else "") or right[0]
    return Probe(outcomes.domains[i], outcomes.texts[i], gold, responses)


def select_aggregators(outcomes: OutcomeTable, candidates: Sequence[str],
                       answer: Callable[[str, list], list[str]], per_domain: int = 20,
                       seed: int = 0) -> tuple[Aggregator, dict[str, dict[str, float]]]:
    """Run the probe: each candidate answers every probe prompt (``answer(candidate,
    prompts) -> texts``, one batched call per candidate); per domain the most accurate
    candidate is kept (ties: higher global competence). Returns the :class:`Aggregator`
    and the accuracy table ``{domain: {candidate: accuracy}}``."""
    if not candidates:
        raise RoutingError("select_aggregators needs at least one candidate")
    competence = global_competence(outcomes)
    ranked = sorted(candidates, key=lambda c: -competence.get(c, 0.0))
    probes = build_probes(outcomes, per_domain=per_domain, seed=seed)
    prompts = [synthesis_prompt(p.question, p.responses) for p in probes]
    correct = {c: [score_answer(text, p.gold) for text, p in
                   zip(answer(c, prompts), probes, strict=True)] for c in ranked}
    table: dict[str, dict[str, float]] = {}
    for domain in dict.fromkeys(p.domain for p in probes):
        rows = [j for j, p in enumerate(probes) if p.domain == domain]
        table[domain] = {c: float(np.mean([correct[c][j] for j in rows])) for c in ranked}
    by_domain = {d: max(ranked, key=lambda c, d=d: table[d][c]) for d in table}
    return Aggregator(by_domain=by_domain, fallback=ranked[0]), table


def global_competence(outcomes: OutcomeTable) -> dict[str, float]:
    """Each expert's mean validation score over the questions it has results for."""
    out = {}
    for j, name in enumerate(outcomes.experts):
        column = outcomes.scores[:, j]
        column = column[~np.isnan(column)]
        out[name] = float(column.mean()) if column.size else 0.0
    return out


def texts_by_row(answers: Mapping[tuple[int, str], object], row: int,
                 experts: Sequence[str]) -> list[str]:
    """The response texts of one row, one per entry of ``experts`` (duplicates repeat),
    from answers keyed by (row, expert) holding strings or Generations."""
    return [getattr(answers[(row, e)], "text", answers[(row, e)]) for e in experts]


Chooser = Callable[[Decision], str | None]


@dataclass
class AggregatorChoice:
    """Aggregator per task (domain), the fallback, and the probe's accuracy table
    ``{domain: {candidate: accuracy}}`` it came from."""

    by_domain: dict[str, str]
    fallback: str | None
    table: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_probe(cls, aggregator: Aggregator,
                   table: dict[str, dict[str, float]]) -> AggregatorChoice:
        """The choice :func:`~routing.aggregate.select_aggregators` returned."""
        return cls(dict(aggregator.by_domain), aggregator.fallback, table)

    @classmethod
    def from_dict(cls, data: dict) -> AggregatorChoice:
        try:
            return cls(
                by_domain={str(k): str(v) for k, v in data["by_domain"].items()},
                fallback=None if data.get("fallback") is None else str(data["fallback"]),
                table={str(d): {str(c): float(a) for c, a in row.items()}
                       for d, row in (data.get("table") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise RoutingError(f"not an aggregator choice: {err!r}") from None


class AggregatorStore:
    """The stored :class:`AggregatorChoice` (a redis-py client with string replies)."""

    def __init__(self, client, namespace: str = "conclave"):
        self.client, self.namespace = client, namespace

    @property
    def key(self) -> str:
        return f"{self.namespace}:aggregators"

    def save(self, choice: AggregatorChoice) -> None:
        """Store ``choice``, replacing any earlier one."""
        self.client.set(self.key, json.dumps(asdict(choice)))

    def load(self) -> AggregatorChoice | None:
        """The stored choice; None when there is none. :class:`RoutingError` when the
        stored value is not a choice."""
        raw = self.client.get(self.key)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise RoutingError(f"{self.key}: not JSON ({err.msg})") from None
        return AggregatorChoice.from_dict(data if isinstance(data, dict) else {})

    def clear(self) -> bool:
        """Delete the stored choice; True when there was one."""
        return bool(self.client.delete(self.key))


def task_of(decision: Decision, domain_of: Callable[[str], str]) -> str:
    """The task of a decision: the domain of its best-weighted expert."""
    return domain_of(best_weighted(decision))


def choose_aggregator(decision: Decision, choice: AggregatorChoice | None,
                      domain_of: Callable[[str], str],
                      is_live: Callable[[str], bool]) -> str | None:
    """The aggregator for ``decision`` under ``choice`` (see module doc); None: no choice
    applies."""
    if choice is None or not decision.experts:
        return None
    chosen = choice.by_domain.get(task_of(decision, domain_of))
    for name in (chosen, choice.fallback):
        if name is not None and is_live(name):
            return name
    return None


def apply_chooser(decisions: list[Decision], choose: Chooser) -> list[Decision]:
    """Set every decision's ``aggregator`` from ``choose`` (cached decisions too: the
    choice may have changed since they were made)."""
    for decision in decisions:
        decision.aggregator = choose(decision)
    return decisions


class StoredAggregators:
    """Follows the stored choice: :meth:`current` reads it (one GET) and returns the
    chooser for it. When Redis is unreachable or the value is bad, the last good choice
    stays in use, with one warning, and Redis is left alone for ``retry_s`` seconds (a
    routing batch must not wait on connect timeouts during an outage)."""

    def __init__(self, store: AggregatorStore, domain_of: Callable[[str], str],
                 is_live: Callable[[str], bool], retry_s: float = 5.0):
        self.store, self.domain_of, self.is_live = store, domain_of, is_live
        self.choice: AggregatorChoice | None = None
        self._breaker = RedisBreaker(
            log, "cannot read the aggregator choice, keeping the last one: %s",
            "aggregator choice readable again", retry_s=retry_s,
            errors=(redis.RedisError, OSError, RoutingError))

    def current(self) -> Chooser:
        """The chooser under the choice stored now (or the last one read)."""
        try:
            self.choice = self._breaker.call(self.store.load)
        except (RedisUnavailable, *self._breaker.errors):
            pass  # the last good choice stays
        return partial(choose_aggregator, choice=self.choice, domain_of=self.domain_of,
                       is_live=self.is_live)


def spec_domain(lookup: Callable[[str], object]) -> Callable[[str], str]:
    """``domain_of`` from a spec lookup: the spec's ``domain``, else the expert's id (also
    for an expert the lookup does not know)."""

    def domain_of(expert_id: str) -> str:
        try:
            return getattr(lookup(expert_id), "domain", None) or expert_id
        except (LookupError, ValueError):  # unknown expert
            return expert_id

    return domain_of
