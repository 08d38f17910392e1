"""The offline demo pool and `conclave demo`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cluster.cli import main
from experts.demo import build_demo_pool, demo_root
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


def test_demo_command_registers_and_answers(specs, demo_dir, redis_url):
    result = CliRunner().invoke(main, ["demo", "--root", str(demo_dir), "--redis", redis_url])
    assert result.exit_code == 0, result.output
    table = [line.split() for line in result.output.splitlines()]
    answered = {row[0]: row for row in table if row and row[0] in {s.id for s in specs}}
    assert len(answered) == len(specs)
    assert answered["math"][2] == "general-base" and answered["code-base"][2] == "code-base"
    registry = ExpertRegistry(connect(redis_url))
    assert [spec.id for spec in registry.list()] == [spec.id for spec in specs]
