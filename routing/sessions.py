"""Sessions: a conversation keeps the experts it was routed to until a turn clearly belongs
elsewhere.

The routed text (:func:`routed_text`): a follow-up such as "Why?" names no topic; routed
alone it lands on noise. So a short newest turn is routed with the user turns before it
(newest kept whole, older ones filling a word budget), and lands where the conversation is.
A newest turn of ``standalone_words`` or more is a question of its own and is routed alone,
as a fresh request would be (the session rule then holds it to a tighter margin).
``bench/conversations.py`` measures this against the last message alone. A single-turn
request routes on its one user message.

The session id comes, in this order, from the ``x-session-id`` header, the OpenAI ``user``
field, or ``conclave.session`` in the body (:func:`session_key`). The session's decision is
kept in Redis (``<namespace>:session:<id>``, TTL ``routing.sessions.ttl_s``), so every
gateway replica, and one started later, sees the same decision.

Each turn is routed as usual (on the conversation's routed text), then
:func:`keep_or_switch`: the session's experts are kept while each scores within ``margin``
of the best expert for this turn (``question_margin`` for a turn that is a question of its
own); else the fresh decision replaces them. The outcome is
``new``, ``kept`` or ``switched``; ``stateless`` when Redis cannot be reached (the turn is
routed as if it had no session; the first failure is logged, every one counted).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from routing.errors import RoutingError
from routing.selection import Decision

log = logging.getLogger(__name__)
MAX_SESSION_ID = 128
SessionOutcome = Literal["new", "kept", "switched", "stateless"]
_REDIS_ERRORS = (redis.RedisError, OSError)


class ConversationConfig(BaseModel):
    """How the routed text is made from a conversation's user turns (config ``routing.conversation``)."""

    model_config = ConfigDict(extra="forbid")

    turns: int = Field(
        4, ge=1, le=64, description="User turns the routed text is made from, newest first "
        "(1: the last user message alone, as before conversations were routed).")
    max_words: int = Field(
        256, ge=1, description="Word budget of a joined routed text: the newest turn is "
        "always whole; older turns, newest first, fill what it leaves (the last one cut).")
    standalone_words: int = Field(
        8, ge=0, description="A newest turn of at least this many words is a question of its "
        "own: routed alone, not joined (0: always joined).")


@dataclass(frozen=True)
class RoutedText:
    text: str  # what the router sees
    standalone: bool  # the newest turn alone (a single turn, or a question of its own)


def routed_text(user_turns: list[str], config: ConversationConfig) -> RoutedText:
    """The text to route for a conversation whose user messages are ``user_turns`` (oldest
    first). One turn: that turn, unchanged."""
    recent = [turn for turn in user_turns if turn.strip()][-config.turns:]
    if len(recent) < 2:
        return RoutedText(recent[-1] if recent else (user_turns or [""])[-1], True)
    newest = recent[-1]
    left = config.max_words - len(newest.split())
    if config.standalone_words and len(newest.split()) >= config.standalone_words:
        return RoutedText(newest, True)
    earlier: list[str] = []
    for turn in reversed(recent[:-1]):
        if left <= 0:
            break
        words = turn.split()
        earlier.insert(0, " ".join(words[:left]))
        left -= len(words)
    return RoutedText("\n".join([*earlier, newest]), not earlier)


class SessionConfig(BaseModel):
    """Sessions (``routing.sessions``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Keep a session's experts across its turns.")
    ttl_s: int = Field(3600, ge=1, description="Seconds a session lives after its last turn.")
    margin: float = Field(
        0.05, ge=0.0, description="A follow-up keeps the session's experts while each scores "
        "at least the best expert's score minus this (the strategy's scale); below: "
        "re-routed (bench/conversations.py tunes it).")
    question_margin: float = Field(
        0.0, ge=0.0, description="The same for a turn that is a question of its own "
        "(routing.conversation.standalone_words): a new question goes where a fresh request "
        "would unless the session's experts score as well.")
    affinity: bool = Field(
        True, description="Send a conversation's turns to the pool replica of its previous "
        "turn while it is alive and has room (its prefix cache holds the history; "
        "cluster/serve/affinity.py).")
    retry_s: float = Field(
        5.0, gt=0, description="Redis unreachable: turns are routed without their session "
        "for this long before Redis is asked again.")


class SessionIdError(RoutingError):
    """A session id that is too long or holds control characters (HTTP 400)."""


def session_key(header: str | None, user: str | None, body: str | None) -> str | None:
    """The session id: the ``x-session-id`` header, else the OpenAI ``user`` field, else
    ``conclave.session`` in the body; None when none is given."""
    for source, value in (("the x-session-id header", header), ("the 'user' field", user),
                          ("conclave.session", body)):
        if value:
            return check_session_id(value, source)
    return None


def check_session_id(value: str, source: str) -> str:
    if len(value) > MAX_SESSION_ID:
        raise SessionIdError(f"session id from {source} is {len(value)} characters; the "
                             f"limit is {MAX_SESSION_ID}")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise SessionIdError(f"session id from {source} holds control characters; use at "
                             f"most {MAX_SESSION_ID} printable characters")
    return value


@dataclass(frozen=True)
class SessionRecord:
    """What a session keeps: its experts, their weights and the options they were routed
    under (a turn with other routing options starts over)."""

    experts: list[str]
    weights: list[float]
    options_key: str

    def dumps(self) -> str:
        return json.dumps({"experts": self.experts, "weights": self.weights,
                           "options_key": self.options_key})

    @classmethod
    def loads(cls, raw: str) -> SessionRecord:
        data = json.loads(raw)
        return cls(list(data["experts"]), list(data["weights"]), str(data["options_key"]))


@dataclass(frozen=True)
class SessionTurn:
    """One turn's decision under its session, and what became of the session."""

    decision: Decision
    outcome: SessionOutcome
    explanation: dict = field(default_factory=dict)


def keep_or_switch(record: SessionRecord, decision: Decision, options_key: str,
                   margin: float) -> tuple[Decision, SessionOutcome, dict]:
    """The session's experts (``kept``) while each scores within ``margin`` of this turn's
    best; else the fresh ``decision`` (``switched``)."""
    scores = {name: score for name, score in decision.ranked if math.isfinite(score)}
    best = max(scores.values(), default=math.nan)
    kept = {name: scores.get(name) for name in dict.fromkeys(record.experts)}
    why = {"kept_experts": record.experts, "scores": kept, "best": best, "margin": margin}
    if record.options_key != options_key:
        return decision, "switched", {**why, "reason": "other routing options"}
    if any(score is None or score < best - margin for score in kept.values()):
        return decision, "switched", {**why, "reason": "a kept expert scores below the "
                                      "best by more than the margin"}
    held = replace(decision, experts=list(record.experts), weights=list(record.weights))
    return held, "kept", {**why, "reason": "every kept expert is within the margin"}


class SessionStore:
    """Session records in Redis, namespaced, with a TTL; blocking calls (run them off the
    event loop). Redis down: :meth:`decide` says ``stateless`` for ``retry_s``."""

    def __init__(self, client: redis.Redis, namespace: str, config: SessionConfig,
                 on_outcome: Callable[[str], None] = lambda outcome: None):
        self._client, self._prefix, self.config = client, f"{namespace}:session:", config
        self._on_outcome = on_outcome
        self._down_until = 0.0
        self._logged = False

    def decide(self, session: str, decision: Decision, options_key: str,
               dry_run: bool = False, standalone: bool = False) -> SessionTurn:
        """``decision`` (this turn routed afresh) under ``session``: kept, switched or new,
        stored unless ``dry_run``; ``standalone``: the turn is a question of its own."""
        if time.monotonic() < self._down_until:
            return self._stateless(decision)
        try:
            margin = self.config.question_margin if standalone else self.config.margin
            turn = self._decide(session, decision, options_key, dry_run, margin)
        except _REDIS_ERRORS as err:
            self._down_until = time.monotonic() + self.config.retry_s
            if not self._logged:
                self._logged = True
                log.warning("session store unreachable (%s): turns are routed without their "
                            "sessions until it is back (logged once)", type(err).__name__)
            return self._stateless(decision)
        if not dry_run:
            self._on_outcome(turn.outcome)
        return turn

    def _stateless(self, decision: Decision) -> SessionTurn:
        self._on_outcome("stateless")
        return SessionTurn(decision, "stateless", {"reason": "the session store is unreachable"})

    def _decide(self, session: str, decision: Decision, options_key: str, dry_run: bool,
                margin: float) -> SessionTurn:
        key, ttl = self._prefix + session, self.config.ttl_s
        fresh = SessionRecord(decision.experts, decision.weights, options_key)
        raw = self._client.get(key)
        if raw is None:
            # NX: of two replicas starting one session at once, the first one's decision holds
            if dry_run or self._client.set(key, fresh.dumps(), ex=ttl, nx=True):
                return SessionTurn(decision, "new", {"reason": "no earlier turn"})
            raw = self._client.get(key) or fresh.dumps()
        chosen, outcome, why = keep_or_switch(SessionRecord.loads(raw), decision, options_key,
                                              margin)
        if dry_run:
            return SessionTurn(chosen, outcome, why)
        if outcome == "switched":
            self._client.set(key, fresh.dumps(), ex=ttl)
        else:
            self._client.expire(key, ttl)
        return SessionTurn(chosen, outcome, why)


__all__ = ["MAX_SESSION_ID", "ConversationConfig", "RoutedText", "SessionConfig",
           "SessionIdError", "SessionOutcome", "SessionRecord", "SessionStore", "SessionTurn",
           "check_session_id", "keep_or_switch", "routed_text", "session_key"]
