"""ExpertLoader + ModelPool: LoRA experts share their base's engine."""

from __future__ import annotations

import pytest

from experts.engine import GenerationParams
from experts.errors import ExpertError, UnknownExpertError
from experts.loader import EngineChoice, ExpertLoader, adapter_of, engine_key
from experts.pool import ModelPool
from experts.spec import ExpertSpec

HF = EngineChoice(engine="hf")  # these test the transformers engine; vLLM's: test_vllm_engine


@pytest.fixture()
def specs(tiny_lm, tiny_adapters) -> dict[str, ExpertSpec]:
    items = [ExpertSpec(id="base", model=str(tiny_lm))] + [
        ExpertSpec(id=name, kind="lora", base="base", adapter=str(path))
        for name, path in tiny_adapters.items()
    ]
    items.append(ExpertSpec(id="blend", kind="mixture", base="base", experts=["alpha", "beta"]))
    return {spec.id: spec for spec in items}


def lookup_in(specs):
    def lookup(expert_id: str) -> ExpertSpec:
        if expert_id not in specs:
            raise UnknownExpertError(expert_id, list(specs))
        return specs[expert_id]

    return lookup


def test_keys_and_adapter_names(specs):
    assert engine_key(specs["alpha"]) == "base" and adapter_of(specs["alpha"]) == "alpha"
    assert engine_key(specs["base"]) == "base" and adapter_of(specs["base"]) is None
    assert engine_key(specs["blend"]) == "blend"


def test_lora_experts_share_one_engine_in_the_pool(specs):
    loader = ExpertLoader(lookup_in(specs), engines=HF)
    pool = ModelPool(loader, max_models=1)
    rows = [specs["alpha"], specs["base"], specs["beta"]]
    engines = {id(pool.get(engine_key(spec))) for spec in rows}
    assert len(engines) == 1 and pool.stats.loads == 1
    engine = pool.get("base")
    names = [loader.prepare(engine, spec) for spec in rows]
    assert names == ["alpha", None, "beta"]
    assert sorted(engine.adapters) == ["alpha", "beta"]
    out = engine.generate(["x = 1", "x = 1", "x = 1"], GenerationParams(max_tokens=4), names)
    assert len(out) == 3 and out[0].text != out[2].text
    pool.clear()


def test_allowed_roots(specs, tmp_path):
    loader = ExpertLoader(lookup_in(specs), allowed_roots=[str(tmp_path)], engines=HF)
    with pytest.raises(ExpertError, match="outside the allowed roots"):
        loader.load("base")
    assert ExpertLoader(lookup_in(specs), allowed_roots=[]).allowed_roots == []


def test_unknown_and_unsupported_kinds(specs):
    loader = ExpertLoader(lookup_in(specs), engines=HF)
    with pytest.raises(UnknownExpertError, match="'ghost'"):
        loader.load("ghost")
    with pytest.raises(ExpertError, match="no trained gates"):
        loader.load("blend")  # a mixture needs its members' PHATGOOSE gates (test_mixture)
    del loader.builders["mixture"]
    with pytest.raises(ExpertError, match="kind 'mixture' cannot be loaded"):
        loader.load("blend")
