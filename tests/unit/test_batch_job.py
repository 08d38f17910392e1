"""The offline batch job: malformed lines, resume, one generate per expert, aggregation,
failures that do not sink the run, the pattern cache in front of a router."""

from __future__ import annotations

import json

from experts.engine import Generation, GenerationEngine
from experts.errors import ExpertError
from experts.pool import ModelPool
from routing.aggregate import Aggregator
from routing.batch_job import BatchJob, done_ids
from routing.cache.memory import MemoryPatternCache
from routing.errors import RoutingError
from routing.options import RouteOptions
from routing.planner import BatchPlanner, PlanRunner
from routing.selection import Decision

MC = "Which is prime?\nA) 4\nB) 7"
OPTS = RouteOptions()


class LetterEngine(GenerationEngine):
    """Expert ``x`` answers "The answer is B" when x is in "ab", else "A"; records calls."""

    def __init__(self, key: str, calls: list):
        self.key, self.calls = key, calls

    def generate(self, prompts, params=None, adapters=None):
        self.calls.append((self.key, len(prompts)))
        letter = "B" if self.key in "ab" else "A"
        return [Generation(f"<think>hmm</think>The answer is {letter} ({self.key})", 1, 1)
                for _ in prompts]


class FirstLetterRouter:
    """Router-like: experts from the first letters of the text; "boom" fails routing."""

    def __init__(self, cache=None):
        self.cache, self.calls = cache, 0

    def route(self, texts, options=None):
        self.calls += 1
        out = []
        for text in texts:
            if "boom" in text:
                raise RoutingError(f"cannot route {text!r}")
            vector = [float(ord(c)) for c in text[:4].ljust(4)]
            found = self.cache.lookup(text, vector, 1, OPTS) if self.cache else None
            if found is None:
                experts = sorted(set(text.replace(" ", "")[:3].lower())) or ["a"]
                found = Decision(query=text, experts=experts, weights=[1 / len(experts)]
                                 * len(experts), strategy="first", ranked=[], explanation={})
                if self.cache:
                    self.cache.store(text, vector, 1, OPTS, found)
            out.append(found)
        return out


def make_job(failing=(), cache=None, answers=None):
    calls: list = []

    def load(key):
        if key in failing:
            raise ExpertError(f"expert {key!r} does not load")
        return LetterEngine(key, calls)

    pool = ModelPool(load, max_models=2)
    job = BatchJob(FirstLetterRouter(cache), BatchPlanner(max_resident=2), PlanRunner(pool),
                   Aggregator(), answers=answers, version=lambda: 1, progress=False)
    return job, pool, calls


def write(path, lines):
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n"
                            for line in lines))


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_malformed_lines_are_reported_and_skipped(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(src, [{"id": 1, "text": "abc", "topic": "kept"}, "{not json\n", "[1, 2]\n", "\n",
                {"text": "no id"}, {"id": "e", "text": "  "}, {"id": 1, "text": "again"},
                {"id": "x", "text": "boom here"}, {"id": "ok", "text": MC}])
    job, pool, calls = make_job()
    report = job.run(src, out)
    assert [p.split(":")[0] for p in report.problems] == [
        "line 2", "line 3", "line 5", "line 6", "line 7", "id 'x' (line 8)"]
    assert "not JSON" in report.problems[0] and "already appeared" in report.problems[4]
    rows = read(out)
    assert [r["id"] for r in rows] == [1, "ok"] and report.written == 2
    first = rows[0]
    assert first["topic"] == "kept" and first["experts"] == ["a", "b", "c"]
    assert first["mode"] == "synthesis" and first["aggregator"] == "a"  # equal weights: first
    assert first["answer"] == "The answer is B (a)"  # the synthesis, thinking stripped
    assert set(first["timing"]) == {"route_s", "experts_s", "aggregate_s", "chunk"}
    assert rows[1]["mode"] == "vote" and rows[1]["answer"].startswith("The answer is")


def test_one_generate_per_expert_and_resume(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    queries = [{"id": f"q{i}", "text": text} for i, text in enumerate(
        ["abc", "bcd", "cab", "dab", "abd"])]
    write(src, queries[:3])
    job, pool, calls = make_job()
    assert job.run(src, out).written == 3
    expert_calls = [key for key, _ in calls]
    assert sorted(expert_calls[:4]) == ["a", "b", "c", "d"]  # then the aggregator pass
    assert pool.stats.loads == len(set(expert_calls))
    write(src, queries)  # two more queries arrive; rerun
    calls.clear()
    report = job.run(src, out)
    assert (report.already_done, report.written) == (3, 2)
    assert sum(n for key, n in calls if key == "d") == 2  # only the new rows ran
    assert [r["id"] for r in read(out)] == [q["id"] for q in queries]
    assert job.run(src, out).written == 0


def test_torn_last_line_is_cut_and_redone(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "answer": "x"}\n{"id": "b", "ans')
    assert done_ids(out) == {"a"}
    assert out.read_text() == '{"id": "a", "answer": "x"}\n'


def test_failing_expert_does_not_sink_the_run(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(src, [{"id": 1, "text": "abc"}, {"id": 2, "text": "ccc"}])
    job, _, _ = make_job(failing={"c"})
    report = job.run(src, out)
    rows = read(out)
    assert [r["id"] for r in rows] == [1] and rows[0]["experts"] == ["a", "b"]
    assert any("engine 'c' failed" in p for p in report.problems)
    assert any(p.startswith("id '2'") and "rerun retries" in p for p in report.problems)


def test_pattern_and_answer_cache_in_front(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    cache = MemoryPatternCache(store_answers=True)
    write(src, [{"id": 1, "text": "abc"}])
    job, _, calls = make_job(cache=cache, answers=cache)
    job.run(src, out)
    first = read(out)[0]
    assert not first["cached"] and not first["answer_cached"]
    calls.clear()
    write(src, [{"id": 2, "text": "ABC "}])  # same normalised text, new id
    job.run(src, out)
    second = read(out)[1]
    assert second["cached"] and second["answer_cached"] and second["mode"] == "cached"
    assert second["answer"] == first["answer"] and calls == []


def test_the_chooser_picks_each_rows_aggregator(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    job, _, calls = make_job()
    job.choose = lambda decision: "z"  # e.g. the choice stored by `aggregators select`
    write(src, [{"id": 1, "text": "abc"}])
    job.run(src, out)
    assert read(out)[0]["aggregator"] == "z" and ("z", 1) in calls


def test_a_stored_answer_is_not_served_to_a_job_with_other_options(tmp_path):
    from experts.engine import GenerationParams

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    cache = MemoryPatternCache(store_answers=True)
    job, _, _ = make_job(cache=cache, answers=cache)
    write(src, [{"id": 1, "text": "abc"}])
    job.run(src, out)
    for other in (BatchJob(job.router, job.planner, job.runner, Aggregator(mode="best"),
                           answers=cache, version=lambda: 1, progress=False),
                  BatchJob(job.router, job.planner, PlanRunner(job.runner.pool, params=(
                      GenerationParams(max_tokens=7))), Aggregator(), answers=cache,
                      version=lambda: 1, progress=False)):
        write(src, [{"id": other.aggregator.mode, "text": "abc"}])
        other.run(src, out)
        assert read(out)[-1]["answer_cached"] is False
    write(src, [{"id": "same", "text": "abc"}])
    job.run(src, out)
    assert read(out)[-1]["answer_cached"] is True


def test_cli_batch_end_to_end_then_resume(tmp_path, tiny_lm, tiny_adapters, redis_url,
                                          monkeypatch):
    """The real thing: config → router (MiniLM, knn) with the Redis pattern cache → planner
    → tiny LoRA experts on one base → aggregator; then a rerun that resumes."""
    import yaml
    from click.testing import CliRunner

    from cluster.cli import main

    experts = [{"id": "base", "model": str(tiny_lm), "examples": ["the quick brown fox"]}]
    experts += [{"id": name, "kind": "lora", "base": "base", "adapter": str(path),
                 "examples": [f"question about {name}"]} for name, path in tiny_adapters.items()]
    config = tmp_path / "conclave.yaml"
    config.write_text(yaml.safe_dump({"experts": experts, "routing": {"k": 2}}))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(src, [{"id": "a", "text": "what is the derivative of x squared?"}, "oops\n",
                {"id": "b", "text": "Which is prime?\nA) 4\nB) 7"}])
    monkeypatch.setenv("CONCLAVE_REDIS_URL", redis_url)
    args = ["batch", str(src), "-o", str(out), "--config", str(config), "--quiet",
            "--max-tokens", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "skipped line 2: not JSON" in result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["written"] == 2 and summary["loads"] == 1  # LoRA experts share one base
    rows = read(out)
    assert [r["id"] for r in rows] == ["a", "b"] and len(rows[0]["experts"]) == 2
    assert rows[1]["mode"] == "vote" and rows[0]["mode"] == "synthesis"
    again = CliRunner().invoke(main, args)
    assert json.loads(again.output.strip().splitlines()[-1])["already_done"] == 2
    with src.open("a") as handle:  # the same question again under a new id: routed from cache
        handle.write(json.dumps({"id": "c", "text": "What is the derivative of x  squared?"})
                     + "\n")
    third = CliRunner().invoke(main, args)
    assert json.loads(third.output.strip().splitlines()[-1])["written"] == 1
    repeat = read(out)[-1]
    assert repeat["id"] == "c" and repeat["cached"] and repeat["experts"] == rows[0]["experts"]
    missing = CliRunner().invoke(main, ["batch", str(tmp_path / "none.jsonl"), "-o", str(out)])
    assert missing.exit_code != 0 and "input file not found" in missing.output
