"""PHATGOOSE gate training: zero init, the gated formula, training, save/load, bad input."""

from __future__ import annotations

import pytest

from experts.errors import ExpertError, IncompatibleAdapterError
from experts.gates import (
    GATES_FILE,
    check_gates,
    install_gates,
    load_gates,
    save_gates,
    train_gates,
)
from experts.lora_weights import load_lora

TEXTS = ["0123456789 1 + 2 = 3 and 7 * 6 = 42", "the quick brown fox jumps over the lazy dog"]


def _gated_model(tiny_lm, adapter):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm, dtype=torch.float32).eval()
    return model, install_gates(model, load_lora(adapter))


def test_gates_start_at_zero_and_give_half_strength_adapter(tiny_lm, tiny_adapters):
    import torch

    model, gated = _gated_model(tiny_lm, tiny_adapters["alpha"])
    assert set(gated) == set(load_lora(tiny_adapters["alpha"]).modules)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith(".gate") for name in trainable)
    module = next(iter(gated.values()))
    assert torch.count_nonzero(module.gate) == 0
    u = torch.randn(2, 5, module.base.in_features, generator=torch.Generator().manual_seed(0))
    # W u + sigmoid(0ᵀu) · scaling · B A u, with sigmoid(0) = 0.5 for every token.
    expected = module.base(u) + 0.5 * module.scaling * (u @ module.lora_A.T @ module.lora_B.T)
    with torch.no_grad():
        assert torch.allclose(module(u), expected, atol=1e-6)
        assert torch.equal(module.gate_values(u), torch.full((2, 5), 0.5))


def test_gate_value_follows_v(tiny_lm, tiny_adapters):
    import torch

    _, gated = _gated_model(tiny_lm, tiny_adapters["alpha"])
    module = next(iter(gated.values()))
    u = torch.randn(3, module.base.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        module.gate.copy_(u[0])
        assert torch.allclose(module.gate_values(u), torch.sigmoid(u @ u[0]))


def _loss(model, tokenizer, texts) -> float:
    import torch

    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        return float(model(**batch, labels=labels).loss)


def test_training_moves_only_the_gates_and_lowers_the_loss(tiny_lm, tiny_adapters):
    import torch
    from transformers import AutoTokenizer

    adapter = tiny_adapters["beta"]
    gates = train_gates(tiny_lm, adapter, TEXTS, steps=15, lr=5e-2, seed=0)
    again = train_gates(tiny_lm, adapter, TEXTS, steps=15, lr=5e-2, seed=0)
    assert all(torch.equal(gates[name], again[name]) for name in gates)  # seeded
    assert all(torch.count_nonzero(vector) > 0 for vector in gates.values())

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model, gated = _gated_model(tiny_lm, adapter)
    before = _loss(model, tokenizer, TEXTS)
    with torch.no_grad():
        for name, module in gated.items():
            module.gate.copy_(gates[name])
    assert _loss(model, tokenizer, TEXTS) < before


def test_save_and_load_round_trip(tiny_lm, tiny_adapters, tmp_path):
    import shutil

    import torch

    adapter = shutil.copytree(tiny_adapters["gamma"], tmp_path / "gamma")
    lora = load_lora(adapter)
    gates = {
        name: torch.randn(part.A.shape[1], generator=torch.Generator().manual_seed(i))
        for i, (name, part) in enumerate(lora.modules.items())
    }
    path = save_gates(adapter, gates, steps=7)
    assert path == adapter / GATES_FILE
    loaded = load_gates(adapter, lora)
    assert set(loaded) == set(gates)
    assert all(torch.equal(loaded[name], gates[name]) for name in gates)
    assert load_gates(path).keys() == gates.keys()  # the file itself works too


def test_missing_gates_say_how_to_train_them(tiny_adapters):
    with pytest.raises(ExpertError, match="train-gates"):
        load_gates(tiny_adapters["alpha"])


def test_gates_that_do_not_fit_the_adapter_are_refused(tiny_adapters):
    import torch

    lora = load_lora(tiny_adapters["alpha"])
    name = next(iter(lora.modules))
    with pytest.raises(IncompatibleAdapterError, match="gates missing"):
        check_gates({name: torch.zeros(lora.modules[name].A.shape[1])}, lora)
    wrong = {module: torch.zeros(3) for module in lora.modules}
    with pytest.raises(IncompatibleAdapterError, match="shape"):
        check_gates(wrong, lora)


def test_bad_training_input_is_refused(tiny_lm, tiny_adapters, tmp_path):
    with pytest.raises(ExpertError, match="steps"):
        train_gates(tiny_lm, tiny_adapters["alpha"], TEXTS, steps=0)
    with pytest.raises(ExpertError, match="no training texts"):
        train_gates(tiny_lm, tiny_adapters["alpha"], ["", "  "], steps=1)
    with pytest.raises(ExpertError, match="not a peft adapter"):
        train_gates(tiny_lm, tmp_path, TEXTS, steps=1)


def test_cli_trains_and_saves_a_registered_experts_gates(
    redis_url, tiny_lm, tiny_adapters, tmp_path
):
    import json
    import shutil

    from click.testing import CliRunner

    from cluster.cli import main
    from experts.redis_conn import connect
    from experts.registry import ExpertRegistry
    from experts.spec import ExpertSpec

    adapter = shutil.copytree(tiny_adapters["alpha"], tmp_path / "alpha")
    registry = ExpertRegistry(connect(redis_url))
    registry.add(ExpertSpec(id="base", model=str(tiny_lm)))
    registry.add(ExpertSpec(id="alpha", kind="lora", base="base", adapter=str(adapter)))
    data = tmp_path / "examples.jsonl"
    data.write_text("\n".join(json.dumps({"text": text}) for text in TEXTS) + "\n")

    def run(*args):
        return CliRunner().invoke(main, ["experts", "train-gates", *args, "--redis", redis_url])

    result = run("alpha", "--data", str(data), "--steps", "2")
    assert result.exit_code == 0, result.output
    assert "trained gates for alpha on 2 examples (2 steps)" in result.output
    assert set(load_gates(adapter, load_lora(adapter))) == set(load_lora(adapter).modules)

    assert "unknown expert 'ghost'" in run("ghost", "--data", str(data)).output
    assert "gates need a lora one" in run("base", "--data", str(data)).output
    data.write_text('{"text": "fine"}\n{"prompt": "no text"}\n')
    bad = run("alpha", "--data", str(data))
    assert bad.exit_code != 0 and 'examples.jsonl:2: a row needs a string "text"' in bad.output
