"""Answer scoring for validation runs: how a generated answer compares with the gold one.

- ``mc``: the multiple-choice letter the answer commits to ("the answer is (C)", "C.",
  "Answer: c", a lone "C") against the gold letter;
- ``exact``: normalised exact match (case, punctuation, articles and spaces ignored);
- ``numeric``: the last number in the answer against the gold number, within a relative
  tolerance (commas, "$", "%" ignored);
- ``auto``: ``mc`` when the gold is a single letter A–J, ``numeric`` when it is a number,
  else ``exact``.
"""

from __future__ import annotations

import math
import re
import string

from routing.errors import RoutingError

METRICS = ("auto", "mc", "exact", "numeric")
LETTERS = "ABCDEFGHIJ"
_MC_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*(?:option\s*)?[\(\[]?\s*([A-J])\s*[\)\]]?(?![A-Za-z])", re.I),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"^\s*\[?([A-J])[\]\.\):]", re.M),
    re.compile(r"^\s*([A-J])\s*$", re.M),
]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def extract_choice(text: str) -> str | None:
    """The letter A–J an answer commits to (the last "answer is X" wins), or None."""
    for pattern in _MC_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


def extract_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators ignored), or None."""
    found = _NUMBER.findall(text.replace("$", "").replace("%", ""))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def normalise_answer(text: str) -> str:
    """Lowercase, punctuation and articles removed, spaces collapsed."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def score_answer(prediction: str, gold: str, metric: str = "auto", tolerance: float = 1e-4) -> float:
    """1.0 when ``prediction`` matches ``gold`` under ``metric``, else 0.0."""
    if metric not in METRICS:
        raise RoutingError(f"unknown answer metric {metric!r}; valid: {', '.join(METRICS)}")
    gold = str(gold).strip()
    if not gold:
        raise RoutingError("gold answer is empty")
    if metric == "auto":
        metric = _auto_metric(gold)
    if metric == "mc":
        return float(extract_choice(prediction) == gold.upper())
    if metric == "numeric":
        want, got = extract_number(gold), extract_number(prediction)
        if want is None:
            raise RoutingError(f"gold answer {gold!r} is not a number")
        return float(got is not None and math.isclose(got, want, rel_tol=tolerance,
                                                      abs_tol=tolerance))
    return float(normalise_answer(prediction) == normalise_answer(gold))


def _auto_metric(gold: str) -> str:
    if len(gold) == 1 and gold.upper() in LETTERS:
        return "mc"
    if _NUMBER.fullmatch(gold.replace("$", "").replace("%", "").strip()):
        return "numeric"
    return "exact"
