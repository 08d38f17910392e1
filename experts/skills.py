"""Skill data for the real skill experts: generated here, exact answers, held-out test items.

Each skill is a task the real base model (SmolLM2-135M-Instruct) gets wrong and a small LoRA
adapter can learn. Items come from a seeded generator; a hash of each item's *input* (the
number, the words, the date...) puts it in ``train`` or ``test``, so no test input is ever
seen in training, whatever the phrasing. :func:`is_correct` is the exact-match check the
tests, the demo and the benches share.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

TEST_SHARE = 5  # one input in five is held out for testing
_ROMAN = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
          (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
_UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100),
          ("kilograms", "grams", 1000), ("liters", "milliliters", 1000),
          ("centimeters", "millimeters", 10), ("kilowatts", "watts", 1000)]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_FIRST = ["Maria", "James", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tom", "Sofia", "Ivan",
          "Grace", "Kwame", "Elena", "Noah", "Fatima", "Lucas", "Mei", "Jonas", "Amara", "Luca"]
_LAST = ["Lopez", "Smith", "Tanaka", "Haddad", "Novak", "Silva", "Patel", "Brown", "Rossi",
         "Petrov", "Kim", "Mensah", "Garcia", "Muller", "Khan", "Dubois", "Chen", "Berg"]
_CITIES = ["Denver", "Lisbon", "Osaka", "Cairo", "Prague", "Lima", "Mumbai", "Leeds", "Turin",
           "Kazan", "Seoul", "Accra", "Austin", "Bergen", "Lagos", "Quebec", "Dublin", "Perth"]
_NOUNS = ["apple", "river", "candle", "mountain", "window", "garden", "pencil", "rocket",
          "forest", "bridge", "planet", "violin", "castle", "pillow", "island", "engine",
          "silver", "cookie", "dragon", "harbor", "marble", "ladder", "meadow", "tunnel"]


@dataclass(frozen=True)
class SkillItem:
    """One question with its exact answer."""

    skill: str
    question: str
    answer: str


@dataclass(frozen=True)
class Skill:
    """A skill: what it is, how to draw one (input key, question, answer), how to compare."""

    name: str
    description: str
    draw: Callable[[random.Random], tuple[str, str, str]]
    normalize: Callable[[str], object]


def roman(number: int) -> str:
    """``number`` (1–3999) in Roman numerals."""
    out = []
    for value, letters in _ROMAN:
        count, number = divmod(number, value)
        out.append(letters * count)
    return "".join(out)


def _draw_roman(rng: random.Random) -> tuple[str, str, str]:
    number = rng.randint(1, 999)
    question = rng.choice(["Write {n} in Roman numerals.", "What is {n} as a Roman numeral?",
                           "Convert {n} to Roman numerals."]).format(n=number)
    return str(number), question, roman(number)


def _draw_units(rng: random.Random) -> tuple[str, str, str]:
    big, small, factor = rng.choice(_UNITS)
    value = rng.randint(1, 999)
    question = rng.choice(["Convert {v} {a} to {b}.", "How many {b} are in {v} {a}?",
                           "{v} {a} is how many {b}?"]).format(v=value, a=big, b=small)
    return f"{value} {big}", question, str(value * factor)


def _draw_json(rng: random.Random) -> tuple[str, str, str]:
    name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    city = rng.choice(_CITIES)
    sentence = rng.choice(["{n} moved to {c} last spring.", "After years abroad, {n} settled "
                           "in {c}.", "{n} works as a nurse in {c}.", "Born in {c}, {n} "
                           "now teaches music."]).format(n=name, c=city)
    question = f"Extract the person's name and city as JSON with keys name and city: {sentence}"
    return f"{name}|{city}", question, json.dumps({"name": name, "city": city})


def _draw_reverse(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(_NOUNS, rng.randint(4, 5))
    question = rng.choice(["Reverse the order of these words: {w}",
                           "Write these words in reverse order: {w}"]).format(w=" ".join(words))
    return " ".join(words), question, " ".join(reversed(words))


def _draw_isodate(rng: random.Random) -> tuple[str, str, str]:
    year, month, day = rng.randint(1950, 2049), rng.randint(1, 12), rng.randint(1, 28)
    written = f"{_MONTHS[month - 1]} {day}, {year}"
    question = rng.choice(["Rewrite the date {d} in ISO format (YYYY-MM-DD).",
                           "What is {d} in YYYY-MM-DD format?"]).format(d=written)
    return written, question, f"{year:04d}-{month:02d}-{day:02d}"


def _plain(text: str) -> str:
    return text.strip().strip("`").strip().rstrip(".").strip()


def _json_object(text: str) -> object:
    try:
        value = json.loads(_plain(text))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


SKILLS: dict[str, Skill] = {
    "roman": Skill("roman", "Converts numbers to Roman numerals.", _draw_roman,
                   lambda text: _plain(text).upper()),
    "units": Skill("units", "Converts metric units (kilometers to meters, kilograms to grams, "
                   "liters to milliliters...).", _draw_units,
                   lambda text: _plain(text).replace(",", "")),
    "extract": Skill("extract", "Extracts a person's name and city from a sentence as JSON.",
                     _draw_json, _json_object),
    "reverse": Skill("reverse", "Reverses the order of a list of words.", _draw_reverse,
                     lambda text: " ".join(_plain(text).lower().split())),
    "isodate": Skill("isodate", "Rewrites written dates in ISO format (YYYY-MM-DD).",
                     _draw_isodate, _plain),
}


def split_of(skill: str, key: str) -> str:
    """``train`` or ``test``, from a hash of the item's input alone."""
    digest = hashlib.sha256(f"{skill}:{key}".encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def skill_items(skill: str, split: str, count: int, seed: int = 0) -> list[SkillItem]:
    """``count`` distinct items of ``skill`` from ``split`` (``train`` or ``test``)."""
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r} (known: {', '.join(SKILLS)})")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rng = random.Random(f"{skill}:{split}:{seed}")
    seen: set[str] = set()
    items: list[SkillItem] = []
    for _ in range(count * 200):
        key, question, answer = SKILLS[skill].draw(rng)
        if split_of(skill, key) == split and question not in seen:
            seen.add(question)
            items.append(SkillItem(skill, question, answer))
            if len(items) == count:
                return items
    raise ValueError(f"skill {skill!r} has fewer than {count} distinct {split} items")


def is_correct(skill: str, reply: str, answer: str) -> bool:
    """Exact match after the skill's normalisation (whitespace, a final period, code
    fences; JSON compared as objects)."""
    normalize = SKILLS[skill].normalize
    got = normalize(reply)
    return got is not None and got == normalize(answer)


def mixed_stream(count_per_skill: int, seed: int = 0, split: str = "test") -> list[SkillItem]:
    """Held-out items of every skill, shuffled together (seeded)."""
    items = [item for name in SKILLS for item in skill_items(name, split, count_per_skill, seed)]
    random.Random(seed).shuffle(items)
    return items
