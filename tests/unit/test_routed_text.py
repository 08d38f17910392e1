"""The routed text of a conversation (routing/sessions.py)."""

from __future__ import annotations

from routing.sessions import ConversationConfig, RoutedText, routed_text

JOINED = ConversationConfig(standalone_words=0)


def test_a_single_turn_routes_on_itself_unchanged():
    text = "  What is the derivative of x squared?  " + "word " * 300
    assert routed_text([text], ConversationConfig()) == RoutedText(text, True)
    assert routed_text(["", text], ConversationConfig()) == RoutedText(text, True)


def test_a_follow_up_carries_the_earlier_turns():
    turns = ["what is the derivative of x squared", "Why?"]
    assert routed_text(turns, ConversationConfig()) == RoutedText(
        "what is the derivative of x squared\nWhy?", False)


def test_a_long_newest_turn_is_a_question_of_its_own():
    turns = ["what is the derivative of x squared", "Why?",
             "which organ of the body produces insulin in humans"]
    assert routed_text(turns, ConversationConfig(standalone_words=8)) == RoutedText(turns[-1], True)
    assert routed_text(turns, JOINED).text == "\n".join(turns)


def test_the_newest_turn_is_whole_and_older_turns_fill_the_budget_newest_first():
    turns = ["one two three four", "five six", "seven eight nine"]
    config = JOINED.model_copy(update={"max_words": 6})
    # 3 words of the newest, 2 of the one before, 1 of the first
    assert routed_text(turns, config).text == "one\nfive six\nseven eight nine"
    assert routed_text(turns, config.model_copy(update={"max_words": 2})) == RoutedText(
        "seven eight nine", True)


def test_turns_limits_how_far_back_it_looks_and_blank_turns_are_skipped():
    turns = ["alpha", "beta", "  ", "gamma"]
    assert routed_text(turns, JOINED.model_copy(update={"turns": 2})).text == "beta\ngamma"
    assert routed_text(turns, JOINED.model_copy(update={"turns": 1})).text == "gamma"
