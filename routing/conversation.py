"""The text a conversation's turn is routed on.

A follow-up such as "Why?" names no topic; routed alone it lands on noise. So a short
newest turn is routed with the user turns before it (newest kept whole, older ones filling
a word budget), and lands where the conversation is. A newest turn of ``standalone_words``
or more is a question of its own and is routed alone, as a fresh request would be (the
session rule then holds it to a tighter margin: routing/sessions.py).
``bench/conversations.py`` measures this against the last message alone.
A single-turn request routes on its one user message, exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class ConversationConfig(BaseModel):
    """How the routed text is made from a conversation's user turns (``routing.conversation``)."""

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


__all__ = ["ConversationConfig", "RoutedText", "routed_text"]
