"""The routed text of a conversation (routing/conversation.py)."""

from __future__ import annotations

from routing.conversation import ConversationConfig, routed_text


def test_a_single_turn_routes_on_itself_unchanged():
    text = "  What is the derivative of x squared?  " + "word " * 200
    assert routed_text([text], ConversationConfig()) == text


def test_a_follow_up_carries_the_earlier_turns():
    turns = ["what is the derivative of x squared", "Why?"]
    assert routed_text(turns, ConversationConfig()) == "what is the derivative of x squared\nWhy?"


def test_the_newest_turn_is_whole_and_older_turns_fill_the_budget_newest_first():
    turns = ["one two three four", "five six", "seven eight nine"]
    config = ConversationConfig(max_words=6)
    # 3 words of the newest, 2 of the one before, 1 of the first
    assert routed_text(turns, config) == "one\nfive six\nseven eight nine"
    assert routed_text(turns, ConversationConfig(max_words=2)) == "seven eight nine"


def test_turns_limits_how_far_back_it_looks_and_blank_turns_are_skipped():
    turns = ["alpha", "beta", "  ", "gamma"]
    assert routed_text(turns, ConversationConfig(turns=2)) == "beta\ngamma"
    assert routed_text(turns, ConversationConfig(turns=1)) == "gamma"
