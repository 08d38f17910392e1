"""The gathered mixed-adapter LoRA forward computes what peft's per-adapter loop computes."""

from __future__ import annotations

import pytest

from experts.engine import GenerationParams

GREEDY = GenerationParams(max_tokens=8)
PROMPTS = ["what is the derivative of x squared", "def add(a, b):", "the patient", "7 * 6 ="]
ROWS = ["alpha", None, "beta", "gamma", "beta", None, "alpha", "gamma"]


@pytest.fixture(scope="module")
def rank4_adapter(tiny_lm, tmp_path_factory):
    """A LoRA adapter of rank 4 (the shared ones are rank 8), on more modules than theirs."""
    from experts.tiny import add_random_lora

    path = tmp_path_factory.mktemp("rank4") / "delta"
    return add_random_lora(tiny_lm, path, rank=4, seed=7, target_modules=("q_proj", "o_proj"))


def make_engine(tiny_lm, adapters: dict, kernel: str):
    from experts.hf_engine import HFEngine

    engine = HFEngine(str(tiny_lm), lora_kernel=kernel)
    for name, path in adapters.items():
        engine.load_adapter(name, str(path))
    return engine


def texts(engine, prompts, rows) -> list[str]:
    return [g.text for g in engine.generate(prompts, GREEDY, adapters=rows)]


def alone(engine, prompts, rows) -> list[str]:
    """Each row in a batch of its own."""
    return [texts(engine, [p], [a])[0] for p, a in zip(prompts, rows, strict=True)]


def mixed_logits(peft_model, tokenizer, rows):
    import torch

    names = [row or "__base__" for row in rows]
    batch = tokenizer((PROMPTS * 3)[: len(rows)], return_tensors="pt", padding=True)
    with torch.inference_mode():
        return peft_model(**batch, adapter_names=names).logits


@pytest.mark.parametrize("with_rank4", [False, True], ids=["same-rank", "mixed-ranks"])
def test_one_forward_equals_peft_mixed_path(tiny_lm, tiny_adapters, rank4_adapter, with_rank4):
    from peft.tuners.lora.layer import Linear

    from experts.gathered_lora import GatheredLoRA

    adapters = dict(tiny_adapters, **({"delta": rank4_adapter} if with_rank4 else {}))
    rows = ROWS + (["delta", None, "delta"] if with_rank4 else [])
    engine = make_engine(tiny_lm, adapters, "peft")
    model, tokenizer = engine._peft, engine.tokenizer
    expected = mixed_logits(model, tokenizer, rows)
    kernel = GatheredLoRA()
    kernel.prepare(model)
    assert kernel.patched_modules == sum(isinstance(m, Linear) for m in model.modules()) > 0
    got = mixed_logits(model, tokenizer, rows)
    assert (got - expected).abs().max().item() < 1e-5
    base_rows = mixed_logits(model, tokenizer, [None] * len(rows))
    assert (got - base_rows).abs().max().item() > 1e-3, "the adapters should change the logits"
    kernel.invalidate()
    assert kernel.patched_modules == 0
    assert (mixed_logits(model, tokenizer, rows) - expected).abs().max().item() == 0
    engine.close()


def test_generate_matches_peft_and_each_adapter_alone(tiny_lm, tiny_adapters, rank4_adapter):
    adapters = dict(tiny_adapters, delta=rank4_adapter)
    rows = ROWS + ["delta", "delta"]
    prompts = (PROMPTS * 3)[: len(rows)]
    gathered = make_engine(tiny_lm, adapters, "gathered")
    peft = make_engine(tiny_lm, adapters, "peft")
    mixed = texts(gathered, prompts, rows)
    assert gathered._gathered.patched_modules > 0
    assert mixed == texts(peft, prompts, rows)
    assert mixed == alone(peft, prompts, rows)
    assert len(set(texts(gathered, [PROMPTS[0]] * 5, [*adapters, None]))) == 5
    gathered.close()
    peft.close()


def test_unload_and_load_rebuilds_the_stacks(tiny_lm, tiny_adapters, rank4_adapter):
    engine = make_engine(tiny_lm, tiny_adapters, "gathered")
    before = texts(engine, PROMPTS, ["alpha", "beta", None, "gamma"])
    engine.unload_adapter("beta")
    engine.load_adapter("beta", str(rank4_adapter))  # same name, other weights
    after = texts(engine, PROMPTS, ["alpha", "beta", None, "gamma"])
    reference = make_engine(tiny_lm, {"beta": rank4_adapter}, "peft")
    assert after[1] == texts(reference, PROMPTS[1:2], ["beta"])[0] != before[1]
    assert after[0] == before[0] and after[3] == before[3]
    for name in ("alpha", "beta", "gamma"):
        engine.unload_adapter(name)
    assert engine._gathered.patched_modules == 0
    engine.load_adapter("gamma", str(tiny_adapters["gamma"]))
    assert texts(engine, PROMPTS[3:], ["gamma"]) == before[3:]
    reference.close()
    engine.close()


def test_unknown_kernel_is_refused(tiny_lm):
    from experts.errors import ExpertError
    from experts.hf_engine import HFEngine

    with pytest.raises(ExpertError, match="lora_kernel 'fast'"):
        HFEngine(str(tiny_lm), lora_kernel="fast")
