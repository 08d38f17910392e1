"""Offline evaluation: split, metrics, reference rows on hand-made tables, and the whole
``conclave eval`` on a small slice of the shared MMLU-Pro data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from routing.eval.metrics import cost_sweep, top1_hits, vote_hits
from routing.eval.pools import resolve_pool
from routing.eval.reference import reference_rows
from routing.eval.split import released_split, stratified_split
from routing.outcomes import OutcomeError, OutcomeTable


def _table(scores, domains=None, predictions=None, texts=None) -> OutcomeTable:
    scores = np.asarray(scores, dtype=np.float32)
    n, m = scores.shape
    return OutcomeTable(
        ids=[str(i) for i in range(n)], texts=texts or [f"q{i}" for i in range(n)],
        domains=domains or ["d"] * n, experts=[f"e{j}" for j in range(m)], scores=scores,
        predictions=None if predictions is None else np.asarray(predictions, dtype=object),
        cost={f"e{j}": float(j + 1) for j in range(m)},
    )


def test_stratified_split_is_seeded_and_per_domain():
    domains = ["a"] * 50 + ["b"] * 30
    train, test = stratified_split(domains, 0.2, seed=1)
    assert len(test) == 16 and sorted(np.concatenate([train, test])) == list(range(80))
    assert sum(domains[i] == "b" for i in test) == 6
    assert np.array_equal(test, stratified_split(domains, 0.2, seed=1)[1])
    assert not np.array_equal(test, stratified_split(domains, 0.2, seed=2)[1])


def test_released_split_drops_test_texts_seen_in_train():
    table = _table(np.ones((4, 2)), texts=["x", "y", "x", "z"])
    train, test = released_split(table, {"0": "train", "1": "train", "2": "test", "3": "test"})
    assert list(train) == [0, 1] and list(test) == [3]
    with pytest.raises(OutcomeError, match="train' or 'test"):
        released_split(table, {"0": "dev"})


def test_vote_takes_the_majority_and_breaks_ties_by_score():
    outcomes = np.array([[0, 1, 1, 0], [1, 0, 0, 0]], dtype=float)
    predictions = np.array([["A", "B", "B", "C"], ["A", "C", "D", "A"]], dtype=object)
    values = np.array([[0.9, 0.8, 0.7, 0.1], [0.9, 0.8, 0.7, 0.1]])
    # Row 0: B outvotes A. Row 1: A, C, D all differ → the best-scored expert's A wins.
    assert list(vote_hits(values, outcomes, predictions)) == [1.0, 1.0]
    assert list(top1_hits(values, outcomes)) == [0.0, 1.0]
    # Weighted: A (0.9) against B (0.8 + 0.7) still loses; with a dominant weight it wins.
    values[0] = [5.0, 0.8, 0.7, 0.1]
    assert vote_hits(values, outcomes, predictions, weighted=True)[0] == 0.0


def test_reference_rows_are_chosen_on_train():
    train = _table([[1, 0], [1, 0], [0, 1]], domains=["a", "a", "b"])
    test = _table([[0, 1], [1, 0], [0, 1]], domains=["a", "a", "b"],
                  predictions=[["A", "B"], ["A", "B"], ["C", "D"]])
    refs = reference_rows(train, test)
    assert refs["best_single"] == pytest.approx(1 / 3)  # e0 is best on train
    assert refs["best_per_domain"] == pytest.approx(2 / 3)  # e0 for a, e1 for b
    assert refs["oracle"] == 1.0 and refs["random"] == pytest.approx(0.5)


def test_cost_sweep_trades_accuracy_for_cost():
    values = np.array([[0.9, 0.5], [0.9, 0.5]])
    outcomes = np.array([[1.0, 0.0], [1.0, 1.0]])
    points = cost_sweep(values, outcomes, np.array([10.0, 1.0]), [0.0, 2.0])
    assert points[0] == {"lambda": 0.0, "top1": 1.0, "mean_cost": 10.0}
    assert points[1]["mean_cost"] == 1.0 and points[1]["top1"] == 0.5


def test_pools_resolve_names_and_reject_unknown_models():
    experts = ["gemini-1.5-pro-002", "Yi-6B", "mathstral-7B"]
    assert resolve_pool("open", experts) == ["Yi-6B", "mathstral-7B"]
    assert resolve_pool("Yi-6B, mathstral-7B", experts) == ["Yi-6B", "mathstral-7B"]
    with pytest.raises(OutcomeError, match="unknown model"):
        resolve_pool("Yi-6B,gpt-9", experts)


def _slice(src, dst, every: int = 80) -> None:
    """Every ``every``-th question of the shared data set, in the same format."""
    dst.mkdir()
    lines = (src / "questions.jsonl").read_text().splitlines()[::every]
    keep = {json.loads(line)["id"] for line in lines}
    (dst / "questions.jsonl").write_text("\n".join(lines) + "\n")
    for name in ("scores.csv", "predictions.csv"):
        rows = (src / name).read_text().splitlines()
        kept = [row for row in rows[1:] if row.split(",", 1)[0] in keep]
        (dst / name).write_text("\n".join([rows[0], *kept]) + "\n")
    (dst / "models.json").write_text((src / "models.json").read_text())


def test_conclave_eval_runs_end_to_end_on_a_slice(shared_data, tmp_path):
    from cluster.cli import main

    data = tmp_path / "slice"
    _slice(shared_data / "mmlu-pro", data)
    out = tmp_path / "out"
    args = ["eval", str(data), "--pool", "small", "--strategy", "knn", "--strategy", "pilots",
            "--strategy", "hybrid", "--folds", "2", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert set(report["strategies"]) == {"knn", "pilots", "hybrid"}
    for row in report["strategies"].values():
        assert {"top1", "top3_vote", "mean_cost"} <= set(row)
        assert 0.0 <= row["top1"] <= 1.0 and 0.0 <= row["top3_vote"] <= 1.0
    refs = report["reference"]
    assert {"best_single", "best_per_domain", "oracle", "random"} <= set(refs)
    assert refs["random"] <= refs["best_single"] <= refs["oracle"]
    assert (out / "accuracy_vs_cost.png").stat().st_size > 0
    assert (out / "per_domain.png").stat().st_size > 0
    assert "ref: oracle" in result.output


def test_conclave_eval_rejects_unknown_strategy_and_pool(shared_data, tmp_path):
    from cluster.cli import main

    data = tmp_path / "slice"
    _slice(shared_data / "mmlu-pro", data, every=400)
    result = CliRunner().invoke(main, ["eval", str(data), "--strategy", "nope"])
    assert result.exit_code != 0 and "unknown routing strategy 'nope'" in result.output
    result = CliRunner().invoke(main, ["eval", str(data), "--pool", "Yi-6B,gpt-9"])
    assert result.exit_code != 0 and "unknown model" in result.output
