"""Train/test splits for offline evaluation.

Either a seeded split stratified by domain, or the split a data set ships with (a ``split``
field of ``train``/``test`` in ``questions.jsonl``), with test questions whose text also occurs
in train dropped so a router cannot score a test question by remembering it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routing.outcomes import OutcomeError, OutcomeTable, read_questions


def stratified_split(
    domains: list[str], test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test): ``test_fraction`` of every domain goes to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(domains, dtype=object)
    test: list[np.ndarray] = []
    for domain in sorted(set(domains)):
        rows = rng.permutation(np.flatnonzero(labels == domain))
        test.append(rows[: int(round(len(rows) * test_fraction))])
    test_rows = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=int)
    train_rows = np.setdiff1d(np.arange(len(domains)), test_rows)
    return train_rows, test_rows


def released_split(
    table: OutcomeTable, labels: dict[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test) from per-id ``labels``; test texts seen in train are dropped."""
    kinds = [labels.get(qid) for qid in table.ids]
    bad = sorted({str(kind) for kind in kinds} - {"train", "test"})
    if bad:
        raise OutcomeError(f"split labels must be 'train' or 'test'; found {bad}")
    train_rows = np.array([i for i, kind in enumerate(kinds) if kind == "train"], dtype=int)
    seen = {table.texts[i] for i in train_rows}
    test_rows = np.array(
        [i for i, kind in enumerate(kinds) if kind == "test" and table.texts[i] not in seen],
        dtype=int,
    )
    return train_rows, test_rows


def read_split_labels(data_dir: str | Path) -> dict[str, str] | None:
    """id → split label from ``questions.jsonl``; None when the data set has no split field."""
    rows = read_questions(Path(data_dir) / "questions.jsonl")
    if not all("split" in row for row in rows.values()):
        return None
    return {qid: str(row["split"]) for qid, row in rows.items()}


def make_split(
    data_dir: str | Path, table: OutcomeTable, seed: int = 0, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """The released split where the data has one, else the seeded stratified split."""
    labels = read_split_labels(data_dir)
    if labels is not None:
        train_rows, test_rows = released_split(table, labels)
    else:
        train_rows, test_rows = stratified_split(table.domains, test_fraction, seed)
    for rows, kind in ((train_rows, "train"), (test_rows, "test")):
        if len(rows) == 0:
            raise OutcomeError(f"{data_dir}: no {kind} split (no question labelled "
                               f"split={kind!r}, or too few questions to split)")
    return train_rows, test_rows
