"""The gateway's side of conversations: what one request's turn is routed on, and its
routing decision under its session (the rule and the store: :mod:`routing.sessions`;
the routed text: :mod:`routing.conversation`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import quote

from cluster.http.errors import from_domain
from cluster.http.protocol import SessionInfo
from routing.conversation import RoutedText
from routing.decision import Decision
from routing.options import RouteOptions
from routing.sessions import SessionIdError, SessionStore, SessionTurn, session_key


@dataclass(frozen=True)
class Turn:
    """One request as a turn of a conversation."""

    routed: str  # the text routed (the user turns, routing/conversation.py)
    session: str | None = None  # its session id (header, then ``user``, then body)
    standalone: bool = True  # a question of its own (not joined with earlier turns)


def turn_of(routed: RoutedText, header: str | None, user: str | None,
            options: RouteOptions | None) -> Turn:
    """The turn routed on ``routed``; its session from the ``x-session-id`` header, the
    ``user`` field or ``conclave.session``, in that order (a bad id: HTTP 400)."""
    try:
        session = session_key(header, user, options.session if options else None)
    except SessionIdError as err:
        raise from_domain(err) from None
    return Turn(routed.text, session, routed.standalone)


class SessionRouting:
    """Applies a session's decision to a freshly routed turn (``store`` None: sessions
    are off, every turn is routed alone)."""

    def __init__(self, store: SessionStore | None):
        self._store = store

    async def apply(self, turn: Turn, decision: Decision, options: RouteOptions,
                    dry_run: bool = False) -> tuple[Decision, SessionInfo | None, dict]:
        """The decision to follow for ``turn``, what became of its session, and why."""
        session = turn.session
        if self._store is None or session is None or not self._store.config.enabled:
            return decision, None, {}
        kept: SessionTurn = await asyncio.to_thread(
            self._store.decide, session, decision, options.decision_key(), dry_run,
            turn.standalone)
        return kept.decision, SessionInfo(id=session, outcome=kept.outcome), kept.explanation


def session_headers(info: SessionInfo | None) -> dict[str, str]:
    """``x-conclave-session`` (its id) and ``x-conclave-session-outcome``."""
    if info is None:
        return {}
    # header values are latin-1: an id from the body may hold any character
    value = info.id if info.id.isascii() else quote(info.id)
    return {"x-conclave-session": value, "x-conclave-session-outcome": info.outcome}
