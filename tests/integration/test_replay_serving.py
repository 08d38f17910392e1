"""Replay experts served for real (local Ray + Serve, the session's instance): on a slice of
MMLU-Pro, the served router decides exactly as the offline evaluator, the replies are the
chosen model's recorded letters, and a prompt without a recorded question gets the "no
recorded answer" reply (200, counted in /metrics), never a 5xx."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.ray

MODELS = ["Meta-Llama-3_1-70B-Instruct", "Qwen1.5-110B", "Yi-34B", "mathstral-7B",
          "gemma-7b", "DeepSeek-Coder-V2"]
APP, PREFIX = "replay-test", "/replay-test"


def write_slice(src: Path, dst: Path, every: int = 100) -> Path:
    """Every ``every``-th question of ``src`` with all its files' rows."""
    dst.mkdir(parents=True)
    lines = (src / "questions.jsonl").read_text().splitlines()[::every]
    keep = {json.loads(line)["id"] for line in lines}
    (dst / "questions.jsonl").write_text("\n".join(lines) + "\n")
    for name in ("scores.csv", "predictions.csv", "output_chars.csv"):
        rows = (src / name).read_text().splitlines()
        kept = [row for row in rows[1:] if row.split(",", 1)[0] in keep]
        (dst / name).write_text("\n".join([rows[0], *kept]) + "\n")
    (dst / "models.json").write_text((src / "models.json").read_text())
    return dst


def slug(model: str) -> str:
    return model.lower().replace(".", "-")


@pytest.fixture(scope="module")
def replay_app(serve_instance, serving_redis, shared_data, tmp_path_factory):
    from ray import serve

    from cluster.serve.app import build_app

    data = write_slice(shared_data / "mmlu-pro", tmp_path_factory.mktemp("replay") / "slice")
    args = {
        "redis": {"url": serving_redis, "namespace": "replay-itest"},
        "experts": [{"id": slug(m), "engine": "replay", "replay": {"data": str(data), "model": m}}
                    for m in MODELS],
        "routing": {"strategy": "knn", "k": 1, "aggregation": "vote", "outcomes": str(data),
                    "outcomes_subset": {"split": "train", "seed": 0, "experts_only": True},
                    "cache": {"enabled": False}},
        "pools": [{"name": "default", "num_cpus": 0, "max_resident_models": len(MODELS)}],
        "serving": {"allowed_model_roots": [str(data)]},
    }
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield serve_instance + PREFIX, data
    serve.delete(APP)


def offline_choices(data: Path, encoder) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Test texts, the offline evaluator's top-1 expert for each, and their ids' options."""
    from routing.eval.run import build, load_eval_table
    from routing.eval.split import make_split

    table = load_eval_table(data, ",".join(MODELS))
    train_rows, test_rows = make_split(data, table, seed=0)
    train, test = table.subset(train_rows), table.subset(test_rows)
    knn = build("knn", {}, encoder)
    knn.fit(train, encoder.encode(train.texts))
    values = np.nan_to_num(knn.score(test.texts, encoder.encode(test.texts)).values, nan=-9)
    best = np.argsort(-values, axis=1, kind="stable")[:, 0]
    return test.texts, [slug(knn.experts[j]) for j in best], test.ids


def test_served_decisions_and_answers_match_offline_evaluation(replay_app, minilm):
    import openai

    from cluster.cli.replay_demo import messages
    from routing.scoring import extract_choice

    url, data = replay_app
    texts, choices, ids = offline_choices(data, minilm)
    questions = {q["id"]: q for q in map(json.loads, (data / "questions.jsonl").open())}
    with (data / "predictions.csv").open(newline="") as handle:
        letters = {row["id"]: row for row in csv.DictReader(handle)}
    by_slug = {slug(m): m for m in MODELS}
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    assert len(texts) >= 15
    for text, choice, qid in zip(texts, choices, ids, strict=True):
        resp = client.chat.completions.create(
            model="conclave:k=1", messages=messages(text, questions[qid]["options"]))
        served = [e["id"] for e in resp.model_extra["conclave"]["experts"]]
        assert served == [choice], text
        recorded = letters[qid][by_slug[choice]]
        assert (extract_choice(resp.choices[0].message.content) or "") == recorded


def test_prompt_without_a_recorded_question_gets_a_reply_and_a_metric(replay_app):
    from experts.replay_engine import NO_RECORD

    url, _ = replay_app
    resp = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "conclave:k=2", "messages": [{"role": "user", "content": "Tell me a joke."}]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == NO_RECORD
    metrics = httpx.get(url + "/metrics", timeout=30).text
    counted = [line for line in metrics.splitlines()
               if line.startswith("conclave_replay_no_record_total{")]
    assert counted and sum(float(line.rsplit(" ", 1)[1]) for line in counted) >= 1


def test_a_streamed_replay_answer_is_the_recorded_one(replay_app):
    import openai

    url, data = replay_app
    question = json.loads((data / "questions.jsonl").read_text().splitlines()[3])
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    chat = [{"role": "user", "content": question["text"]}]
    whole = client.chat.completions.create(model="conclave:k=1", messages=chat)
    stream = client.chat.completions.create(model="conclave:k=1", messages=chat, stream=True)
    parts = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(parts) >= 2 and "".join(parts) == whole.choices[0].message.content
    assert whole.choices[0].message.content.startswith("The answer is (")


def test_a_cascade_over_replay_experts_is_a_400_naming_the_expert(replay_app):
    url, data = replay_app
    question = json.loads((data / "questions.jsonl").read_text().splitlines()[3])
    resp = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "conclave:k=cascade", "messages": [{"role": "user", "content": question["text"]}]})
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]["message"]
    assert "cannot give it" in message and any(f"'{slug(m)}'" in message for m in MODELS)
