"""The offline demo pool: valid specs, idempotent build, served through loader and pool."""

from __future__ import annotations

import pytest

from experts.demo import build_demo_pool, demo_root
from experts.engine import GenerationParams
from experts.loader import EngineChoice, ExpertLoader, engine_key
from experts.pool import ModelPool
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from experts.spec import check_references


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="module")
def specs(demo_dir):
    return build_demo_pool(demo_dir)


def test_specs_are_plausible_and_valid(specs):
    check_references(specs)
    kinds = {spec.id: spec.kind for spec in specs}
    assert kinds == {
        "general-base": "model",
        "code-base": "model",
        "math": "lora",
        "medicine": "lora",
        "law": "lora",
        "science": "lora",
    }
    for spec in specs:
        assert 6 <= len(spec.examples) <= 10 and len(set(spec.examples)) == len(spec.examples)
        assert spec.description and spec.skills and spec.domain and spec.instruction
    questions = [q for spec in specs for q in spec.examples]
    assert len(set(questions)) == len(questions)


def test_build_is_idempotent(specs, demo_dir):
    files = sorted(demo_root(demo_dir).rglob("*"))
    stamps = [path.stat().st_mtime_ns for path in files]
    assert build_demo_pool(demo_dir) == specs
    assert sorted(demo_root(demo_dir).rglob("*")) == files
    assert [path.stat().st_mtime_ns for path in files] == stamps
    assert not [path for path in files if path.name.endswith(".tmp")]


def test_demo_pool_registers_and_answers_one_batch_per_base(specs, demo_dir, redis_url):
    registry = ExpertRegistry(connect(redis_url))
    assert registry.seed(specs) == [spec.id for spec in specs]
    loader = ExpertLoader(registry.get, allowed_roots=[str(demo_dir)],
                          engines=EngineChoice(engine="hf"))
    pool = ModelPool(loader, max_models=2)
    groups: dict[str, list] = {}
    for spec in registry.list():
        groups.setdefault(engine_key(spec), []).append(spec)
    assert sorted(groups) == ["code-base", "general-base"]
    for key, members in groups.items():
        engine = pool.get(key)
        adapters = [loader.prepare(engine, spec) for spec in members]
        params = GenerationParams(max_tokens=6)
        answers = engine.generate([spec.examples[0] for spec in members], params, adapters)
        assert [a.completion_tokens for a in answers] == [6] * len(members)
    assert pool.stats.loads == 2
    pool.clear()
