"""`conclave experts train`: bad data is named by line, a trained adapter learns its answers
and names its base, and one made for another base is refused at registration."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cluster.cli import main
from experts.errors import ExpertError, IncompatibleAdapterError
from experts.lora_training import MIN_EXAMPLES, TrainOptions, load_examples, train_expert


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n"
                            for row in rows))
    return path


def good_rows(count=MIN_EXAMPLES):
    return [{"prompt": f"what is {i} plus one", "answer": str(i + 1)} for i in range(count)]


@pytest.mark.parametrize(("bad", "message"), [
    ("{not json", "line 3: not JSON"),
    ({"prompt": "hi", "answer": "  "}, "line 3: empty answer"),
    ({"prompt": "hi"}, "line 3: expected 'messages', or 'prompt' and 'answer'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "line 3: 'messages' must be"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
     "line 3: empty answer"),
])
def test_a_bad_line_is_named(tmp_path, bad, message):
    rows = good_rows()
    rows.insert(2, bad)
    with pytest.raises(ExpertError, match=message):
        load_examples(write_jsonl(tmp_path / "train.jsonl", rows))


def test_too_few_examples_names_the_number_needed(tmp_path):
    with pytest.raises(ExpertError, match=f"3 examples, at least {MIN_EXAMPLES} are needed"):
        load_examples(write_jsonl(tmp_path / "train.jsonl", good_rows(3)))


def test_chat_rows_and_prompt_rows_both_load(tmp_path):
    rows = good_rows()
    rows[0] = {"messages": [{"role": "system", "content": "Be terse."},
                            {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello"}]}
    examples = load_examples(write_jsonl(tmp_path / "train.jsonl", rows))
    assert examples[0].messages[-1] == {"role": "user", "content": "hi"}
    assert examples[0].answer == "hello" and examples[1].answer == "2"


def test_training_lowers_the_answer_loss_and_writes_a_card(tiny_lm, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", good_rows(32))
    facts = train_expert(tiny_lm, data, tmp_path / "adapter",
                         TrainOptions(steps=30, batch_size=8, lr=1e-2, rank=4,
                                      target_modules=["q_proj", "v_proj"]))
    assert facts["final_loss"] < facts["first_loss"] * 0.95  # a tiny random model: slow
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_lm) and config["r"] == 4
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "train.jsonl" in card and "30 steps" in card and str(facts["final_loss"]) in card


def test_an_adapter_trained_on_another_base_is_refused(tiny_lm, tmp_path):
    from experts.adapters import check_adapter_base

    data = write_jsonl(tmp_path / "train.jsonl", good_rows())
    train_expert(tiny_lm, data, tmp_path / "adapter",
                 TrainOptions(steps=1, batch_size=4, target_modules=["q_proj"]))
    check_adapter_base(str(tmp_path / "adapter"), str(tiny_lm))  # its own base: accepted
    with pytest.raises(IncompatibleAdapterError, match="is for base"):
        check_adapter_base(str(tmp_path / "adapter"), str(tmp_path / "other-model"))


def test_cli_errors_are_one_line_and_non_zero(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", good_rows(2))
    result = CliRunner().invoke(main, ["experts", "train", "--base", "local:nope", "--data",
                                       str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "unknown model alias 'local:nope'" in result.output
    result = CliRunner().invoke(main, ["experts", "train", "--base", str(tmp_path), "--data",
                                       str(data), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "2 examples, at least" in result.output
