"""LoRA on HFEngine: mixed-adapter batches, idempotent loads, base checks before loading."""

from __future__ import annotations

import json

import pytest

from experts.adapters import same_model
from experts.engine import GenerationParams
from experts.errors import ExpertError, IncompatibleAdapterError

GREEDY = GenerationParams(max_tokens=8)
PROMPTS = ["what is the derivative of x squared", "def add(a, b):", "the patient", "7 * 6 ="]


@pytest.fixture()
def engine(tiny_lm, tiny_adapters):
    from experts.hf_engine import HFEngine

    engine = HFEngine(str(tiny_lm))
    for name, path in tiny_adapters.items():
        engine.load_adapter(name, str(path))
    yield engine
    engine.close()


def test_mixed_batch_equals_each_adapter_alone(engine):
    rows = ["alpha", None, "beta", "gamma", "alpha", None]
    prompts = PROMPTS + PROMPTS[:2]
    mixed = engine.generate(prompts, GREEDY, adapters=rows)
    alone = [
        engine.generate([p], GREEDY, adapters=[a])[0] for p, a in zip(prompts, rows, strict=True)
    ]
    assert [g.text for g in mixed] == [g.text for g in alone]
    assert [g.completion_tokens for g in mixed] == [g.completion_tokens for g in alone]
    same_prompt = engine.generate(
        [PROMPTS[0]] * 4, GREEDY, adapters=["alpha", "beta", "gamma", None]
    )
    assert len({g.text for g in same_prompt}) == 4, "each adapter should change the output"


def test_no_adapters_means_base_rows(engine):
    assert engine.generate(PROMPTS[:2], GREEDY) == engine.generate(
        PROMPTS[:2], GREEDY, adapters=[None, None]
    )


def test_loading_twice_is_a_no_op(engine, tiny_adapters):
    before = engine.generate(PROMPTS[:1], GREEDY, adapters=["alpha"])
    engine.load_adapter("alpha", str(tiny_adapters["alpha"]))
    assert sorted(engine.adapters) == ["alpha", "beta", "gamma"]
    assert sorted(engine._peft.peft_config) == ["alpha", "beta", "gamma"]
    assert engine.generate(PROMPTS[:1], GREEDY, adapters=["alpha"]) == before


def test_unload_adapters_back_to_base(engine, tiny_lm):
    from experts.hf_engine import HFEngine

    fresh = HFEngine(str(tiny_lm))
    base = fresh.generate(PROMPTS, GREEDY)
    fresh.close()
    engine.unload_adapter("alpha")
    with pytest.raises(ExpertError, match="not loaded: alpha"):
        engine.generate(PROMPTS[:1], GREEDY, adapters=["alpha"])
    engine.unload_adapter("beta")
    engine.unload_adapter("gamma")
    assert engine.adapters == {}
    assert engine.generate(PROMPTS, GREEDY) == base
    with pytest.raises(ExpertError, match="'beta' is not loaded"):
        engine.unload_adapter("beta")


def test_wrong_base_is_refused_before_loading(engine, tmp_path):
    # Only a config, no weights: had the engine tried to load it, the error would differ.
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "org/another-model"})
    )
    with pytest.raises(IncompatibleAdapterError, match="'org/another-model'"):
        engine.load_adapter("foreign", str(tmp_path))
    assert "foreign" not in engine.adapters


def test_adapter_without_config_is_refused(engine, tmp_path):
    with pytest.raises(ExpertError, match="no adapter_config.json"):
        engine.load_adapter("empty", str(tmp_path))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Qwen/Qwen2.5-0.5B", "qwen/qwen2.5-0.5b", True),
        ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct", False),
        ("/models/Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B", True),
        ("/models/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B", True),
        ("/hf/models--Qwen--Qwen2.5-0.5B/snapshots/abc", "Qwen/Qwen2.5-0.5B", True),
        ("/models/llama", "Qwen/Qwen2.5-0.5B", False),
        ("/a/b/../c", "/a/c", True),
    ],
)
def test_same_model(a, b, same):
    assert same_model(a, b) is same
    assert same_model(b, a) is same
