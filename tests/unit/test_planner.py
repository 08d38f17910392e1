"""BatchPlanner: load counts on hand-made decisions, order, budget; PlanRunner against the
real ModelPool (a recording engine) and against real tiny LoRA experts."""

from __future__ import annotations

import pytest

from experts.engine import Generation, GenerationEngine, GenerationParams
from experts.pool import ModelPool
from routing.planner import BatchPlanner, PlanRunner

DECISIONS = [["a", "b", "c"], ["a", "a", "d"], ["b", "c", "e"], ["e", "a", "b"], ["f"]]


class RecordingEngine(GenerationEngine):
    """Answers ``<key>:<prompt>`` and records each generate call (a real engine subclass)."""

    def __init__(self, key: str, calls: list):
        self.key, self.calls = key, calls

    def generate(self, prompts, params=None, adapters=None):
        self.calls.append((self.key, list(prompts), adapters))
        return [Generation(f"{self.key}:{p}", 1, 1) for p in prompts]


def recording_pool(max_models: int):
    calls: list = []
    resident_at_load: list[int] = []
    pool = None

    def load(key: str):
        resident_at_load.append(len(pool.resident()))
        return RecordingEngine(key, calls)

    pool = ModelPool(load, max_models=max_models)
    return pool, calls, resident_at_load


def test_each_expert_planned_once_and_rows_deduplicated():
    plan = BatchPlanner().plan(DECISIONS)
    assert sorted(plan.expert_keys) == list("abcdef")
    assert plan.loads == 6
    step_a = next(s for s in plan.experts if s.key == "a")
    assert step_a.tasks == [(0, "a"), (1, "a"), (3, "a")]  # row 1 named "a" twice: once
    assert plan.aggregate == []


def test_resident_engines_run_first_without_a_load():
    plan = BatchPlanner(max_resident=4).plan(DECISIONS, resident=["x", "c", "e"])
    assert plan.expert_keys[:2] == ["c", "e"]
    assert [s.load for s in plan.experts[:2]] == [False, False]
    assert plan.loads == 4  # a, b, d, f


def test_aggregators_run_last_so_they_stay_loaded():
    aggregators = ["a", None, "a", "b", None]
    plan = BatchPlanner(max_resident=2).plan(DECISIONS, aggregators)
    assert sorted(plan.expert_keys[-2:]) == ["a", "b"]
    assert sorted(s.key for s in plan.aggregate) == ["a", "b"]
    assert not any(s.load for s in plan.aggregate)
    assert plan.loads == 6
    assert plan.aggregate[0].tasks in ([(0, "a"), (2, "a")], [(3, "b")])
    with pytest.raises(ValueError, match="aggregators"):
        BatchPlanner().plan(DECISIONS, ["a"])


def test_an_aggregator_beyond_the_budget_is_loaded_again():
    plan = BatchPlanner(max_resident=1).plan(DECISIONS, ["a", None, "b", None, None])
    assert plan.loads == 6 + 1  # a and b both last, only one stays resident


def test_runner_on_model_pool_matches_plan_and_respects_budget():
    pool, calls, resident_at_load = recording_pool(max_models=2)
    pool.get("f")  # already loaded before the batch
    loads_before = pool.stats.loads
    plan = BatchPlanner(max_resident=2).plan(DECISIONS, resident=pool.resident())
    prompts = {task: f"q{task[0]}" for step in plan.experts for task in step.tasks}
    answers = PlanRunner(pool).run(plan.experts, prompts)
    assert pool.stats.loads - loads_before == plan.loads == 5
    assert max(resident_at_load) <= 2 - 1  # room is made before each load
    assert [key for key, _, _ in calls] == plan.expert_keys  # one generate per engine
    assert answers[(1, "d")].text == "d:q1"
    assert len(answers) == sum(len(set(row)) for row in DECISIONS)


def test_runner_chunks_but_loads_once():
    pool, calls, _ = recording_pool(max_models=1)
    plan = BatchPlanner(max_resident=1).plan([["a"]] * 5)
    prompts = {(r, "a"): "q" * (5 - r) for r in range(5)}
    answers = PlanRunner(pool, max_batch_size=2).run(plan.experts, prompts)
    assert [p for _, p, _ in calls] == [["q", "qq"], ["qqq", "qqqq"], ["qqqqq"]]  # by length
    assert pool.stats.loads == 1
    assert answers[(0, "a")].text == "a:qqqqq"  # still keyed by task


def test_lora_experts_share_one_load_and_one_mixed_batch(tiny_lm, tiny_adapters):
    from experts.loader import EngineChoice, ExpertLoader, engine_key
    from experts.spec import ExpertSpec
    from routing.planner import spec_preparer

    specs = {"base": ExpertSpec(id="base", model=str(tiny_lm))}
    for name, path in tiny_adapters.items():
        specs[name] = ExpertSpec(id=name, kind="lora", base="base", adapter=str(path))
    loader = ExpertLoader(specs.__getitem__, engines=EngineChoice(engine="hf"))
    pool = ModelPool(loader, max_models=1)
    planner = BatchPlanner(key_of=lambda e: engine_key(specs[e]), max_resident=1)
    plan = planner.plan([["alpha", "beta"], ["gamma", "base"], ["alpha"]])
    assert plan.expert_keys == ["base"] and plan.loads == 1
    prompts = {t: "the quick brown fox" for t in plan.experts[0].tasks}
    runner = PlanRunner(pool, spec_preparer(loader, specs.__getitem__),
                        GenerationParams(max_tokens=4))
    answers = runner.run(plan.experts, prompts)
    assert pool.stats.loads == 1 and len(answers) == 5
    assert set(pool.get("base").adapters) == {"alpha", "beta", "gamma"}
