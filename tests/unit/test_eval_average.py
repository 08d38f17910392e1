"""Macro vs micro averaging, fractional outcomes (pass rates) end to end, and the bad-input
errors of the outcome reader and the split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from routing.eval.metrics import averaged, top1_hits, vote_hits
from routing.eval.split import make_split
from routing.outcomes import OutcomeError, OutcomeTable, load_outcomes


def test_macro_weighs_every_domain_the_same_micro_every_question():
    # Domain a: 3 questions, all right; domain b: 1 question, wrong.
    hits = np.array([1.0, 1.0, 1.0, 0.0])
    domains = ["a", "a", "a", "b"]
    assert averaged(hits, domains, "micro") == pytest.approx(0.75)
    assert averaged(hits, domains, "macro") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="micro' or 'macro"):
        averaged(hits, domains, "weighted")


def _write(folder, scores: list[list[str]], split: list[str] | None = None) -> None:
    folder.mkdir()
    with (folder / "questions.jsonl").open("w") as handle:
        for i in range(len(scores)):
            row = {"id": f"q{i}", "domain": "ab"[i % 2], "text": f"question number {i}"}
            if split is not None:
                row["split"] = split[i]
            handle.write(json.dumps(row) + "\n")
    lines = ["id,e0,e1", *(f"q{i},{a},{b}" for i, (a, b) in enumerate(scores))]
    (folder / "scores.csv").write_text("\n".join(lines) + "\n")


def test_fractional_outcomes_are_read_and_scored(tmp_path):
    _write(tmp_path / "frac", [["0.3", "0.9"], ["1", "0.25"], ["", "0.5"]])
    table = load_outcomes(tmp_path / "frac")
    assert table.scores[0].tolist() == pytest.approx([0.3, 0.9])
    assert np.isnan(table.scores[2, 0])
    values = np.array([[0.9, 0.1], [0.2, 0.8]])  # route q0 to e0, q1 to e1
    outcomes = table.scores[:2]
    assert top1_hits(values, outcomes).tolist() == pytest.approx([0.3, 0.25])
    predictions = np.array([["A", "B"], ["A", "B"]], dtype=object)
    assert vote_hits(values, outcomes, predictions, k=2).tolist() == pytest.approx([0.3, 0.25])


@pytest.mark.parametrize("bad", ["1.5", "-0.1"])
def test_an_outcome_outside_0_1_is_refused_naming_the_line(tmp_path, bad):
    _write(tmp_path / "bad", [["0.3", "0.9"], [bad, "0"]])
    with pytest.raises(OutcomeError, match=r"scores.csv:3: score .* outside \[0, 1\]"):
        load_outcomes(tmp_path / "bad")
    with pytest.raises(OutcomeError, match=r"must lie in \[0, 1\]"):
        OutcomeTable(ids=["a"], texts=["t"], domains=["d"], experts=["e"],
                     scores=np.array([[2.0]], dtype=np.float32))


def test_a_table_without_a_train_split_is_refused(tmp_path):
    _write(tmp_path / "nosplit", [["1", "0"]] * 4, split=["test"] * 4)
    table = load_outcomes(tmp_path / "nosplit")
    with pytest.raises(OutcomeError, match="no train split"):
        make_split(tmp_path / "nosplit", table)


def test_conclave_eval_reports_macro_and_micro_on_fractional_data(tmp_path):
    from cluster.cli import main

    rng = np.random.default_rng(0)
    rows = [[f"{rng.integers(0, 11) / 10:g}", f"{rng.integers(0, 11) / 10:g}"]
            for _ in range(40)]
    _write(tmp_path / "data", rows)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "data"), "--strategy", "knn",
                                       "--folds", "2", "--average", "macro", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    row = report["strategies"]["knn"]
    per = row["per_domain"]
    assert row["top1_macro"] == pytest.approx(np.mean(list(per.values())))
    assert report["meta"]["average"] == "macro" and "macro average" in result.output
    assert set(report["reference_macro"]) == set(report["reference"])
    assert 0.0 < row["top1"] < 1.0  # fractional outcomes, scored as they are
    bad = CliRunner().invoke(main, ["eval", str(tmp_path / "data"), "--average", "mean"])
    assert bad.exit_code != 0
