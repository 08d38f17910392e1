"""Outcomes: a table of (question, expert) → score in [0, 1], the raw material of every
routing profile. A score is 0/1 (right or wrong) or fractional: a pass rate (3 right answers
of 10 samples → 0.3) or a graded score such as F1; every strategy and metric takes both.

The on-disk form is the shared data format: ``questions.jsonl`` (``id``, ``domain``,
``text``, extra fields) + ``scores.csv`` (``id`` then one column per expert; empty = no
result) + optional ``predictions.csv`` (answer letters) and ``models.json`` (cost).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class OutcomeError(ValueError):
    """An outcome file or table that cannot be used; the message says where."""


@dataclass
class OutcomeTable:
    """Questions × experts. ``scores[i, j]`` is NaN when expert j has no result on i."""

    ids: list[str]
    texts: list[str]
    domains: list[str]
    experts: list[str]
    scores: np.ndarray  # float32, shape (len(ids), len(experts))
    predictions: np.ndarray | None = None  # object array of answer strings ("" = none)
    answers: list[str] | None = None  # gold answer per question, where known
    cost: dict[str, float] = field(default_factory=dict)  # expert -> USD per M output tokens

    def __post_init__(self) -> None:
        n, m = len(self.ids), len(self.experts)
        if self.scores.shape != (n, m):
            raise OutcomeError(f"scores shape {self.scores.shape} != ({n}, {m})")
        if len(self.texts) != n or len(self.domains) != n:
            raise OutcomeError("ids, texts and domains differ in length")
        finite = self.scores[~np.isnan(self.scores)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise OutcomeError(f"scores must lie in [0, 1] (a pass rate or 0/1); found values "
                               f"from {finite.min():g} to {finite.max():g}")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray | list[int]) -> OutcomeTable:
        """The table restricted to ``rows`` (indices), all experts kept."""
        rows = np.asarray(rows, dtype=int)
        return OutcomeTable(
            ids=[self.ids[i] for i in rows],
            texts=[self.texts[i] for i in rows],
            domains=[self.domains[i] for i in rows],
            experts=list(self.experts),
            scores=self.scores[rows],
            predictions=None if self.predictions is None else self.predictions[rows],
            answers=None if self.answers is None else [self.answers[i] for i in rows],
            cost=dict(self.cost),
        )

    def with_experts(self, experts: list[str]) -> OutcomeTable:
        """The table restricted to ``experts`` (in that order)."""
        unknown = [name for name in experts if name not in self.experts]
        if unknown:
            raise OutcomeError(f"unknown expert(s) {unknown}; known: {self.experts}")
        cols = [self.experts.index(name) for name in experts]
        return OutcomeTable(
            ids=list(self.ids),
            texts=list(self.texts),
            domains=list(self.domains),
            experts=list(experts),
            scores=self.scores[:, cols],
            predictions=None if self.predictions is None else self.predictions[:, cols],
            answers=self.answers,
            cost={name: self.cost[name] for name in experts if name in self.cost},
        )

    def complete_rows(self) -> np.ndarray:
        """Indices of questions every expert has a result for."""
        return np.flatnonzero(~np.isnan(self.scores).any(axis=1))


def load_outcomes(data_dir: str | Path) -> OutcomeTable:
    """Read an outcome folder in the shared data format."""
    root = Path(data_dir)
    for name in ("questions.jsonl", "scores.csv"):
        if not (root / name).exists():
            raise OutcomeError(f"{root}: missing {name}")
    questions = read_questions(root / "questions.jsonl")
    experts, by_id = _read_matrix(root / "scores.csv", numeric=True)
    ids = [qid for qid in questions if qid in by_id]
    scores = np.array([by_id[qid] for qid in ids], dtype=np.float32).reshape(len(ids), -1)
    predictions = None
    if (root / "predictions.csv").exists():
        pred_experts, preds = _read_matrix(root / "predictions.csv", numeric=False)
        cols = [pred_experts.index(e) if e in pred_experts else None for e in experts]
        predictions = np.array(
            [[preds.get(qid, [""] * len(pred_experts))[c] if c is not None else "" for c in cols]
             for qid in ids],
            dtype=object,
        ).reshape(len(ids), len(experts))
    return OutcomeTable(
        ids=ids,
        texts=[questions[qid]["text"] for qid in ids],
        domains=[str(questions[qid].get("domain", "")) for qid in ids],
        experts=experts,
        scores=scores,
        predictions=predictions,
        answers=[str(questions[qid].get("answer", "")) for qid in ids],
        cost=_read_cost(root / "models.json", experts),
    )


def read_questions(path: str | Path) -> dict[str, dict]:
    """id → row of a questions JSONL; a bad line raises :class:`OutcomeError` naming it."""
    path = Path(path)
    questions: dict[str, dict] = {}
    with path.open() as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise OutcomeError(f"{path}:{lineno}: not JSON ({err.msg})") from None
            if "id" not in row or "text" not in row:
                raise OutcomeError(f"{path}:{lineno}: needs 'id' and 'text'")
            questions[str(row["id"])] = row
    return questions


def _read_matrix(path: Path, numeric: bool) -> tuple[list[str], dict[str, list]]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[0] != "id":
            raise OutcomeError(f"{path}: first column must be 'id'")
        rows: dict[str, list] = {}
        for lineno, row in enumerate(reader, start=2):
            values = row[1:]
            if numeric:
                values = [_score(value, path, lineno) for value in values]
            rows[row[0]] = values
    return header[1:], rows


def _score(value: str, path: Path, lineno: int) -> float:
    if value == "":
        return math.nan
    try:
        score = float(value)
    except ValueError:
        raise OutcomeError(f"{path}:{lineno}: score {value!r} is not a number") from None
    if math.isnan(score):
        raise OutcomeError(f"{path}:{lineno}: NaN score (leave the cell empty for 'no result')")
    if not 0.0 <= score <= 1.0:
        raise OutcomeError(f"{path}:{lineno}: score {value!r} outside [0, 1] (scores are 0/1 "
                           "or a pass rate, e.g. 0.3 for 3 right answers of 10)")
    return score


def _read_cost(path: Path, experts: list[str]) -> dict[str, float]:
    if not path.exists():
        return {}
    meta = json.loads(path.read_text())
    cost = {}
    for name in experts:
        entry = meta.get(name) or {}
        if "output_usd_per_mtok" in entry:
            cost[name] = float(entry["output_usd_per_mtok"])
        elif entry.get("active_params_b") is not None:
            cost[name] = float(entry["active_params_b"])  # size as a cost proxy
    return cost
