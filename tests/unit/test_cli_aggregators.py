"""`conclave aggregators select|show|clear` through click's runner: tiny LoRA experts
answer the probe, the choice lands in the real embedded Redis."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from click.testing import CliRunner

from cluster.cli import main
from experts.redis_conn import connect
from routing.aggregate import AggregatorStore

EXPERTS = ["base", "alpha", "beta"]
QUESTIONS = [("m1", "math", "What is 2+2?\nA) 4\nB) 5\nC) 6"),
             ("m2", "math", "What is 3+3?\nA) 6\nB) 7\nC) 8"),
             ("l1", "law", "Is a verbal contract binding?\nA) yes\nB) no\nC) never")]


def write_outcomes(root, predictions: bool = True):
    root.mkdir()
    with open(root / "questions.jsonl", "w") as handle:
        for qid, domain, text in QUESTIONS:
            handle.write(json.dumps({"id": qid, "domain": domain, "text": text,
                                     "answer": "A"}) + "\n")
    rows = {"scores.csv": ["1", "0", "0"], "predictions.csv": ["A", "B", "C"]}
    for name, values in rows.items():
        if name == "predictions.csv" and not predictions:
            continue
        with open(root / name, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["id", *EXPERTS])
            out.writerows([qid, *values] for qid, _, _ in QUESTIONS)
    return root


@pytest.fixture()
def run(tmp_path, tiny_lm, tiny_adapters, redis_url):
    experts = [{"id": "base", "model": str(tiny_lm), "examples": ["the quick brown fox"]}]
    experts += [{"id": name, "kind": "lora", "base": "base", "adapter": str(path),
                 "domain": "math", "examples": [f"question about {name}"]}
                for name, path in tiny_adapters.items() if name in EXPERTS]
    config = tmp_path / "conclave.yaml"
    config.write_text(yaml.safe_dump({"experts": experts,
                                      "redis": {"url": redis_url, "namespace": "cli"}}))

    def invoke(*args: str):
        return CliRunner().invoke(main, ["aggregators", *args, "--config", str(config)])

    return invoke


def test_select_stores_a_choice_then_show_and_clear(run, tmp_path, redis_url):
    data = write_outcomes(tmp_path / "val")
    result = run("select", "--outcomes", str(data), "--candidates", "base,alpha",
                 "--per-domain", "2", "--max-tokens", "2")
    assert result.exit_code == 0, result.output
    choice = AggregatorStore(connect(redis_url), namespace="cli").load()
    assert set(choice.by_domain) == {"math", "law"}
    assert set(choice.by_domain.values()) <= {"base", "alpha"}
    assert choice.fallback == "base"  # the most competent on validation
    assert set(choice.table["math"]) == {"base", "alpha"}
    assert "saved to cli:aggregators" in result.output
    shown = run("show")
    assert shown.exit_code == 0 and "fallback: base" in shown.output
    assert "math" in shown.output and "law" in shown.output
    assert "cleared" in run("clear").output
    assert "no aggregator choice stored" in run("show").output


@pytest.mark.parametrize(("extra", "message"), [
    ((), "no predictions.csv"),
    (("--candidates", "base,ghost"), "unknown candidate(s) ['ghost']"),
])
def test_bad_input_fails_with_one_line(run, tmp_path, extra, message):
    data = write_outcomes(tmp_path / "val", predictions=bool(extra))
    result = run("select", "--outcomes", str(data), *extra)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
