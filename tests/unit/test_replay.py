"""Replay experts: recorded answers found inside any prompt, the latency model, config
errors, the served router's outcome subset (no Ray here)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from cluster.config import ConfigError, parse_config
from cluster.ops.metrics import ConclaveMetrics
from cluster.serve.messages import ExpertRequest
from cluster.serve.pool_batch import Row, run_batch
from experts.engine import GenerationParams
from experts.loader import ExpertLoader, adapter_of
from experts.replay_data import RecordedAnswers, check_replay_source
from experts.replay_engine import NO_LETTER, NO_RECORD, ReplayEngine, answer_text
from experts.spec import ExpertSpec, ReplayOptions
from routing.aggregate import synthesis_prompt
from routing.scoring import extract_choice

QUESTIONS = [
    {"id": "q1", "domain": "math", "text": "What is 2 + 2?", "options": ["3", "4"],
     "answer": "B"},
    {"id": "q2", "domain": "law", "text": "Which statement is true?", "options": ["Cats", "Dogs"],
     "answer": "A"},
    {"id": "q3", "domain": "law", "text": "Which  statement is TRUE?", "options": ["Red", "Blue"],
     "answer": "B"},
    {"id": "q4", "domain": "math", "text": "Compute the integral of x from 0 to 1, exactly.",
     "options": ["1/2", "1"], "answer": "A"},
]
LETTERS = {"q1": ("B", "A"), "q2": ("A", "A"), "q3": ("B", "A"), "q4": ("A", "")}


def write_replay_folder(root: Path) -> Path:
    """A small replay folder: 4 questions (two share a text), 2 models, sizes, lengths."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    with (root / "predictions.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "Big-Model", "small.model"])
        out.writerows([qid, *letters] for qid, letters in LETTERS.items())
    with (root / "scores.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "Big-Model", "small.model"])
        gold = {q["id"]: q["answer"] for q in QUESTIONS}
        out.writerows([qid, *(int(x == gold[qid]) for x in letters)]
                      for qid, letters in LETTERS.items())
    (root / "output_chars.csv").write_text("id,Big-Model,small.model\nq1,400,40\nq2,40,40\n"
                                           "q3,40,40\nq4,40,\n")
    (root / "models.json").write_text(json.dumps({"Big-Model": {"active_params_b": 70},
                                                  "small.model": {"params_b": 7}}))
    return root


@pytest.fixture()
def folder(tmp_path) -> Path:
    return write_replay_folder(tmp_path / "replay")


def engine(folder: Path, model: str = "Big-Model", **options) -> ReplayEngine:
    return ReplayEngine(RecordedAnswers.load(folder), model,
                        ReplayOptions(data=str(folder), model=model, **options))


def test_answers_are_the_recorded_letters_however_the_prompt_is_wrapped(folder):
    replay = engine(folder)
    template = "<|user|>\nWhat is 2 +   2?\n<|assistant|>\n"  # a chat template's text
    chat = [{"role": "system", "content": "Options: (A) 3 (B) 4"},
            {"role": "user", "content": "What is 2 + 2?"}]
    synthesis = synthesis_prompt("What is 2 + 2?", ["The answer is (A).", "B"])
    outs = replay.generate([template, chat, synthesis, "Compute the integral of x from 0 to 1, "
                            "exactly."], GenerationParams())
    assert [out.text for out in outs] == ["The answer is (B)."] * 3 + ["The answer is (A)."]
    assert all(extract_choice(out.text) for out in outs) and not any(o.no_record for o in outs)
    small = engine(folder, "small.model").generate(["What is 2 + 2?"])
    assert small[0].text == answer_text("A") == "The answer is (A)."


def test_questions_sharing_a_text_are_told_apart_by_their_options(folder):
    answers = RecordedAnswers.load(folder)
    assert answers.find("which statement is true?") == "q2"  # no options: the first recorded
    assert answers.find([{"role": "system", "content": "(A) Red (B) Blue"},
                         {"role": "user", "content": "Which statement is true?"}]) == "q3"
    assert answers.find("Q: which statement is true? (A) cats (B) dogs") == "q2"


def test_unknown_prompt_and_missing_letter_get_a_reply_not_an_error(folder):
    outs = engine(folder, "small.model").generate(
        ["Who painted the Mona Lisa?", [{"role": "user", "content": "   "}],
         "Compute the integral of x from 0 to 1, exactly."])
    assert [out.text for out in outs] == [NO_RECORD, NO_RECORD, NO_LETTER]
    assert [out.no_record for out in outs] == [True, True, False]
    assert all(extract_choice(out.text) is None for out in outs)  # scored wrong, not a letter


def test_unknown_prompt_is_counted_in_the_metrics(folder):
    spec = ExpertSpec(id="big", engine="replay", replay={"data": str(folder), "model": "Big-Model"})
    replay = ReplayEngine.from_spec(spec)
    rows = [Row(ExpertRequest("big", "What is 2 + 2?")),
            Row(ExpertRequest("big", "Nothing recorded here"))]
    replies = run_batch(replay, rows, lambda _e: spec, lambda *_: None, adapter_of)
    assert [reply.no_record for reply in replies] == [False, True]
    metrics = ConclaveMetrics()
    for reply in replies:
        metrics.record_generation("default", "big", reply)
    assert 'conclave_replay_no_record_total{expert="big"} 1.0' in metrics.render().decode()


class FakeTime:
    """A clock that only moves when slept on; remembers every sleep."""

    def __init__(self):
        self.now, self.sleeps = 100.0, []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def test_latency_model_delays_the_first_tokens_then_each_row_by_its_recorded_length(folder):
    fake = FakeTime()
    options = ReplayOptions(data=str(folder), model="Big-Model", latency=True, ttft_s=0.5,
                            tokens_per_s=20.0)
    replay = ReplayEngine(RecordedAnswers.load(folder), "Big-Model", options, sleep=fake.sleep,
                          clock=fake.clock)
    seen = []
    outs = replay.generate_streaming(["What is 2 + 2?", "Which statement is true?"],
                                     on_text=lambda row, delta: seen.append((fake.now - 100, row,
                                                                              delta)))
    # First words at ttft; then q2 (40 chars = 10 tokens: +0.5 s), q1 (400 chars: +5 s).
    assert seen[:2] == [(0.5, 0, "The"), (0.5, 1, "The")]
    assert seen[2:] == [(1.0, 1, " answer is (A)."), (5.5, 0, " answer is (B).")]
    assert ["".join(d for _, r, d in seen if r == row) for row in (0, 1)] == [o.text for o in outs]


def test_latency_defaults_from_size_scale_and_off(folder):
    fake = FakeTime()
    answers = RecordedAnswers.load(folder)
    big = ReplayEngine(answers, "Big-Model", ReplayOptions(data=str(folder), model="Big-Model",
                                                          latency=True, time_scale=0.5))
    small = ReplayEngine(answers, "small.model", ReplayOptions(data=str(folder),
                                                              model="small.model", latency=True))
    assert big.ttft_s == pytest.approx(0.5 * (0.02 + 0.004 * 70))  # models.json: 70B active
    assert small.ttft_s < big.ttft_s and small.s_per_token < big.s_per_token
    off = ReplayEngine(answers, "Big-Model", ReplayOptions(data=str(folder), model="Big-Model",
                                                          ttft_s=3.0), sleep=fake.sleep,
                       clock=fake.clock)
    off.generate(["What is 2 + 2?"])
    assert fake.sleeps == []  # latency off: answers come at once


def test_loader_builds_replay_engines_inside_the_allowed_roots_only(folder, tmp_path):
    spec = ExpertSpec(id="big", engine="replay", replay={"data": str(folder), "model": "Big-Model"})
    loaded = ExpertLoader(lambda _id: spec, [str(folder.parent)]).load("big")
    assert loaded.generate(["What is 2 + 2?"])[0].text == "The answer is (B)."
    with pytest.raises(ValueError, match="outside the allowed roots"):
        ExpertLoader(lambda _id: spec, [str(tmp_path / "elsewhere")]).load("big")


@pytest.mark.parametrize("change, message", [
    ({"model": "Nope-9B"}, "replay model 'Nope-9B' is not a column of"),
    ({"data": "MISSING"}, "has no questions.jsonl"),
    ({"data": "NO_PREDICTIONS"}, "has no predictions.csv"),
])
def test_bad_replay_source_is_a_config_error_naming_it(folder, tmp_path, change, message):
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "questions.jsonl").write_text((folder / "questions.jsonl").read_text())
    paths = {"MISSING": str(tmp_path / "nowhere"), "NO_PREDICTIONS": str(tmp_path / "bare")}
    replay = {"data": str(folder), "model": "Big-Model", **change}
    replay["data"] = paths.get(replay["data"], replay["data"])
    with pytest.raises(ConfigError, match=message) as err:
        parse_config({"experts": [{"id": "x", "engine": "replay", "replay": replay}]})
    assert "experts.0" in str(err.value) and "'x'" in str(err.value)


def test_replay_engine_and_options_go_together(folder):
    with pytest.raises(ConfigError, match="engine 'replay' and `replay"):
        parse_config({"experts": [{"id": "x", "engine": "replay"}]})
    with pytest.raises(ConfigError, match="engine 'replay' and `replay"):
        parse_config({"experts": [{"id": "x", "model": "org/m",
                                   "replay": {"data": str(folder), "model": "Big-Model"}}]})
    with pytest.raises(ConfigError, match="needs `model`"):
        parse_config({"experts": [{"id": "x"}]})
    check_replay_source(folder, "small.model")  # a model name need not be a slug


def test_predictions_are_replayed_for_real_models(shared_data):
    data = shared_data / "mmlu-pro"
    answers = RecordedAnswers.load(data)
    with (data / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    sample = random.Random(0).sample(rows, 150)
    questions = {q["id"]: q for q in map(json.loads, (data / "questions.jsonl").open())}
    for model in ("Meta-Llama-3_1-8B-Instruct", "Qwen1.5-110B", "mathstral-7B"):
        replay = ReplayEngine(answers, model, ReplayOptions(data=str(data), model=model))
        prompts = [[{"role": "system", "content": " ".join(questions[r["id"]]["options"])},
                    {"role": "user", "content": questions[r["id"]]["text"]}] for r in sample]
        outs = replay.generate(prompts)
        assert [extract_choice(o.text) or "" for o in outs] == [r[model] for r in sample]


def test_replay_config_is_the_open_pool_fitted_on_the_eval_train_split(shared_data):
    from cluster.cli.replay_demo import held_out, replay_config
    from routing.served_outcomes import served_outcomes

    config = replay_config(shared_data)
    held = held_out(config)  # raises unless the experts are exactly the open pool
    assert len(config.experts) == 26 and config.routing.aggregation == "vote"
    subset = config.routing.outcomes_subset
    table = served_outcomes(config.routing.outcomes, config.experts, subset.split, subset.seed,
                            subset.experts_only)
    assert table.ids == held.train.ids  # test questions held out
    assert table.experts == [held.ids[name] for name in held.train.experts]
    assert (table.scores == held.train.scores).all()


def test_unclaimed_outcome_columns_are_refused_unless_experts_only(folder):
    from routing.errors import RoutingError
    from routing.router import build_router

    specs = [ExpertSpec(id="big", engine="replay",
                        replay={"data": str(folder), "model": "Big-Model"})]
    config = parse_config({"routing": {"outcomes": str(folder)}})
    with pytest.raises(RoutingError, match=r"column\(s\) \['small.model'\] with no expert spec"):
        build_router(config, specs, None, encoder=_Hash())
    config = parse_config({"routing": {"outcomes": str(folder),
                                       "outcomes_subset": {"experts_only": True}}})
    assert build_router(config, specs, None, encoder=_Hash()).experts == ["big"]


class _Hash:
    """A deterministic stand-in encoder (the outcome plumbing is under test, not embeddings)."""

    dim = 8

    def encode(self, texts):
        import numpy as np

        rows = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts]
        vectors = np.array(rows, dtype=np.float32).reshape(len(texts), 8)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_admin_refuses_replay_data_outside_the_allowed_roots(folder, tmp_path, redis_url):
    from cluster.catalog import ExpertCatalog
    from cluster.http.admin import ExpertAdmin
    from cluster.http.errors import ApiError
    from experts.redis_conn import connect
    from experts.registry import ExpertRegistry

    catalog = ExpertCatalog(ExpertRegistry(connect(redis_url), namespace="replay-admin"))
    body = {"id": "big", "engine": "replay", "replay": {"data": str(folder), "model": "Big-Model"}}
    with pytest.raises(ApiError, match="outside the allowed roots"):
        ExpertAdmin(catalog, "t", [str(tmp_path / "elsewhere")]).add(body)
    assert ExpertAdmin(catalog, "t", [str(folder)]).add(body)["added"] == "big"
