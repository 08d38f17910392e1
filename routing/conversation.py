"""The text a conversation is routed on: its user turns, newest kept whole, older ones
filling a word budget.

A follow-up such as "Why?" names no topic; routed alone it lands on noise. Routed with
the turns before it, it lands where the conversation is. A new question in the middle of
a conversation is long enough to fill most of the budget itself, so it routes much as it
would alone. ``bench/conversations.py`` measures this against the last message alone.
A single-turn request routes on its one user message, exactly as before.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConversationConfig(BaseModel):
    """How the routed text is made from a conversation's user turns (``routing.conversation``)."""

    model_config = ConfigDict(extra="forbid")

    turns: int = Field(
        4, ge=1, le=64, description="User turns the routed text is made from, newest first "
        "(1: the last user message alone, as before conversations were routed).")
    max_words: int = Field(
        48, ge=1, description="Word budget of the routed text: the newest turn is always "
        "whole; older turns, newest first, fill what it leaves (the last one cut to fit).")


def routed_text(user_turns: list[str], config: ConversationConfig) -> str:
    """The text to route for a conversation whose user messages are ``user_turns`` (oldest
    first). One turn: that turn, unchanged."""
    recent = [turn for turn in user_turns if turn.strip()][-config.turns:]
    if not recent:
        return user_turns[-1] if user_turns else ""
    newest = recent[-1]
    left = config.max_words - len(newest.split())
    earlier: list[str] = []
    for turn in reversed(recent[:-1]):
        if left <= 0:
            break
        words = turn.split()
        earlier.insert(0, " ".join(words[:left]))
        left -= len(words)
    return "\n".join([*earlier, newest])


__all__ = ["ConversationConfig", "routed_text"]
