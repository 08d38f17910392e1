"""The skill data: exact answers, and test inputs that never appear in training."""

from __future__ import annotations

import json

import pytest

from experts.skills import SKILLS, is_correct, mixed_stream, roman, skill_items, split_of


@pytest.mark.parametrize(("number", "numeral"), [(1, "I"), (4, "IV"), (9, "IX"), (14, "XIV"),
                                                 (40, "XL"), (90, "XC"), (400, "CD"),
                                                 (944, "CMXLIV"), (999, "CMXCIX")])
def test_roman_numerals(number, numeral):
    assert roman(number) == numeral


@pytest.mark.parametrize("skill", list(SKILLS))
def test_test_inputs_never_appear_in_train(skill):
    train = skill_items(skill, "train", 2000)
    test = skill_items(skill, "test", 100)
    train_questions = {item.question for item in train}
    assert not train_questions & {item.question for item in test}
    # the split is by input, whatever the phrasing: no test answer is a train answer for
    # the skills whose answer is a function of the input alone
    if skill in ("roman", "isodate", "extract"):
        assert not {item.answer for item in train} & {item.answer for item in test}
    assert all(split_of(skill, "x") in ("train", "test") for _ in range(2))


@pytest.mark.parametrize("skill", list(SKILLS))
def test_items_are_seeded_and_their_answers_check(skill):
    items = skill_items(skill, "test", 20, seed=3)
    assert items == skill_items(skill, "test", 20, seed=3)
    assert len({item.question for item in items}) == 20
    for item in items:
        assert is_correct(skill, item.answer, item.answer)
        assert is_correct(skill, f"  {item.answer}.\n", item.answer)
        assert not is_correct(skill, f"The answer is {item.answer}, I think.", item.answer)


def test_exact_match_rules():
    assert is_correct("roman", "mcmxc", "MCMXC")
    assert is_correct("units", "4,000", "4000")
    answer = json.dumps({"name": "Ana Silva", "city": "Lima"})
    assert is_correct("extract", '{"city": "Lima", "name": "Ana Silva"}', answer)
    assert is_correct("extract", '```\n{"name": "Ana Silva", "city": "Lima"}\n```', answer)
    assert not is_correct("extract", '{"name": "Ana Silva"}', answer)
    assert not is_correct("extract", "not json", answer)
    assert is_correct("reverse", "Apple  river", "apple river")


def test_mixed_stream_holds_every_skill_shuffled():
    stream = mixed_stream(5, seed=1)
    assert len(stream) == 5 * len(SKILLS)
    assert {item.skill for item in stream} == set(SKILLS)
    assert [item.skill for item in stream] != sorted(item.skill for item in stream)


def test_unknown_skill_and_split_are_refused():
    with pytest.raises(ValueError, match="unknown skill 'nope'"):
        skill_items("nope", "train", 1)
    with pytest.raises(ValueError, match="split must be"):
        skill_items("roman", "dev", 1)
