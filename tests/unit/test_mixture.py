"""GLIDER local mixture: two LoRA experts trained on different text, routed token by token.

The base is a tiny LM trained briefly on both kinds of text (so its hidden states are about
the tokens, not random), then a digit expert and a word expert are LoRA-trained on their own
text and get PHATGOOSE gates. The real check: with α = 0, the learned gates alone send digit
tokens to the digit expert and word tokens to the word expert in held-out mixed text.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from experts.engine import GenerationParams
from experts.errors import (
    ExpertError,
    ExpertExistsError,
    IncompatibleAdapterError,
    UnknownExpertError,
)
from experts.mixture import top_k_weights
from experts.mixture_engine import MixtureEngine, MixtureMember, load_mixture

WORDS = (
    "apple river stone cloud green table window garden music paper light house forest "
    "ocean bread chair summer winter yellow silver candle mirror pocket rabbit"
).split()
EMBED = {"digits": np.eye(8)[0], "words": np.eye(8)[1]}  # instruction embeddings g_i
PROMPTS = ["apple river", "4821 3390", "stone 12 cloud"]


def digit_text(rng: random.Random, n: int = 8) -> str:
    return " ".join(
        "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 5))) for _ in range(n)
    )


def word_text(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def mixed_text(rng: random.Random, n: int = 6) -> str:
    pairs = zip(word_text(rng, n).split(), digit_text(rng, n).split(), strict=True)
    return " ".join(token for pair in pairs for token in pair)


def _pretrain_base(path, texts) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experts.lm_training import train_lm

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_lm(model, list(model.parameters()), tokenizer, texts, steps=100, lr=3e-3)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict:
    """Base path and two trained experts with gates: {"base", "digits", "words"}."""
    from experts.gates import save_gates, train_gates
    from experts.lm_training import train_lora_adapter
    from experts.tiny import build_tiny_lm

    rng = random.Random(0)
    data = {"digits": [digit_text(rng) for _ in range(64)]}
    data["words"] = [word_text(rng) for _ in range(64)]
    mixed = [mixed_text(rng, 4) for _ in range(64)]
    root = tmp_path_factory.mktemp("glider")
    base = build_tiny_lm(root / "lm", data["digits"] + data["words"], vocab_size=300)
    _pretrain_base(base, data["digits"] + data["words"] + mixed)
    paths = {"base": base}
    for name, texts in data.items():
        paths[name] = train_lora_adapter(base, root / name, texts, steps=30, lr=1e-2)
        save_gates(paths[name], train_gates(base, paths[name], texts, steps=30, lr=5e-2))
    return paths


def _members(pool, names=("digits", "words")) -> list[MixtureMember]:
    return [MixtureMember(name, pool[name], None, EMBED[name]) for name in names]


@pytest.fixture(scope="module")
def local(pool) -> MixtureEngine:
    """α = 0: only the learned gates decide."""
    return MixtureEngine(pool["base"], _members(pool), alpha=0.0, top_k=2)


def test_learned_gates_route_digits_and_words_to_their_experts(local):
    rng = random.Random(1234)  # held out: not the training seed
    routes = local.route([mixed_text(rng) for _ in range(8)])
    hits = {"digits": [], "words": []}
    for row in routes:
        for entry in row:
            token = entry["token"].strip()
            kind = "digits" if token.isdigit() else "words" if token.isalpha() else None
            if kind:
                hits[kind].append(entry["top"] == kind)
    for kind, picked in hits.items():
        assert len(picked) > 50, kind
        assert sum(picked) / len(picked) >= 0.8, (kind, sum(picked) / len(picked))


@pytest.mark.parametrize("name", ["digits", "words"])
def test_large_alpha_and_its_instruction_give_that_expert_alone(pool, name):
    from experts.hf_engine import HFEngine

    params = GenerationParams(max_tokens=12)
    single = HFEngine(str(pool["base"]))
    single.load_adapter(name, str(pool[name]))
    expected = single.generate(PROMPTS, params, adapters=[name] * len(PROMPTS))
    mixture = MixtureEngine(pool["base"], _members(pool), alpha=1000.0, top_k=2)
    q = np.stack([EMBED[name]] * len(PROMPTS))
    got = mixture.generate(PROMPTS, params, embeddings=q, trace=True)
    assert [g.text for g in got] == [e.text for e in expected]
    assert [g.completion_tokens for g in got] == [e.completion_tokens for e in expected]
    assert all(step["top"] == name for g in got for step in g.token_trace)


def test_trace_has_one_entry_per_generated_token(local):
    params = GenerationParams(max_tokens=6)
    plain = local.generate(PROMPTS, params)
    traced = local.generate(PROMPTS, params, trace=True)
    assert [g.text for g in traced] == [g.text for g in plain]  # tracing changes nothing
    assert all(g.token_trace is None for g in plain)
    for generation in traced:
        assert len(generation.token_trace) == generation.completion_tokens
        for step in generation.token_trace:
            assert sum(step["weights"].values()) == pytest.approx(1.0, abs=1e-3)
            assert sum(step["picked"].values()) == 2 * step["layers"]  # k = 2 per layer


def test_a_mixture_streams_each_rows_text_as_it_is_generated(local):
    params = GenerationParams(max_tokens=6)
    plain = local.generate(PROMPTS, params)
    deltas: dict[int, list[str]] = {}
    streamed = local.generate_streaming(
        PROMPTS, params, on_text=lambda row, text: deltas.setdefault(row, []).append(text))
    assert [g.text for g in streamed] == [g.text for g in plain]  # streaming changes nothing
    assert {row: "".join(parts) for row, parts in deltas.items()} == {
        row: g.text for row, g in enumerate(plain) if g.text}
    assert any(len(parts) > 1 for parts in deltas.values())  # token by token, not at the end


def test_top_k_keeps_k_and_renormalises():
    import torch

    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 0.0, 3.0, 0.1]])
    weights = top_k_weights(logits, 2)
    probs = logits.softmax(-1)
    assert torch.equal((weights > 0).sum(-1), torch.tensor([2, 2]))
    assert torch.allclose(weights.sum(-1), torch.ones(2))
    assert weights[0, 0] / weights[0, 1] == pytest.approx(float(probs[0, 0] / probs[0, 1]))
    assert weights[1, 2] > 0 and weights[1, 3] > 0 and weights[1, 0] == 0
    assert torch.allclose(top_k_weights(logits, 4), probs)


def test_layer_matches_the_formula_term_by_term():
    import math

    import torch
    from torch.nn import functional as F

    from experts.lora_weights import LoraModule
    from experts.mixture import RoutingState, install_mixture_layers

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5))
    state = RoutingState(n_experts=3)
    layer = install_mixture_layers(model, ["0"], state, top_k=2)["0"]
    ranks = [2, 3, 1]  # unequal ranks are zero-padded
    loras = [
        LoraModule(torch.randn(r, 6, generator=gen), torch.randn(5, r, generator=gen), 0.5 * r)
        for r in ranks
    ]
    gates = [torch.randn(6, generator=gen) for _ in ranks]
    layer.set_experts([0, 1, 2], loras, gates)
    state.bias = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, -1.0]])
    h = torch.randn(2, 4, 6, generator=gen)
    with torch.no_grad():
        out = layer(h)
    for b in range(2):
        for t in range(4):
            u = h[b, t]
            logits = torch.stack(
                [F.layer_norm(u, (6,)) @ F.layer_norm(g, (6,)) / math.sqrt(6) for g in gates]
            )
            p = (logits + state.bias[b]).softmax(-1)
            top = p.topk(2).indices.tolist()
            expected = model[0].base(u) + sum(
                p[i] / p[top].sum() * loras[i].scaling * loras[i].B @ (loras[i].A @ u) for i in top
            )
            assert torch.allclose(out[b, t], expected, atol=1e-5)


def test_adding_and_removing_an_expert_leaves_the_others_alone(pool, tmp_path):
    import torch

    from experts.gates import load_gates, save_gates
    from experts.lora_weights import load_lora
    from experts.tiny import add_random_lora

    engine = MixtureEngine(pool["base"], _members(pool), alpha=0.0, top_k=2)
    params = GenerationParams(max_tokens=8)
    before = [g.text for g in engine.generate(PROMPTS, params)]
    extra = add_random_lora(pool["base"], tmp_path / "extra", seed=5, scale=0.2)
    gates = {n: torch.ones(p.A.shape[1]) for n, p in load_lora(extra).modules.items()}
    save_gates(extra, gates)
    engine.add_expert("extra", extra)
    assert engine.expert_names == ["digits", "words", "extra"]
    assert all(
        torch.equal(load_gates(pool["digits"])[n], gates_now)
        for n, gates_now in engine._members["digits"].gates.items()
    )
    engine.remove_expert("extra")
    assert [g.text for g in engine.generate(PROMPTS, params)] == before


def test_bad_input_gets_clear_errors(pool, tiny_adapters, local, tmp_path):
    import shutil

    with pytest.raises(ExpertError, match="top_k=3 needs at least 3 experts"):
        MixtureEngine(pool["base"], _members(pool), top_k=3)
    other_base = [*_members(pool), MixtureMember("alpha", tiny_adapters["alpha"])]
    with pytest.raises(IncompatibleAdapterError, match="alpha"):
        MixtureEngine(pool["base"], other_base)
    with pytest.raises(UnknownExpertError, match="'nope'.*digits, words"):
        local.remove_expert("nope")
    with pytest.raises(ExpertError, match="at least 2"):
        local.remove_expert("words")
    with pytest.raises(ExpertExistsError, match="digits"):
        local.add_expert("digits", pool["digits"])
    gateless = shutil.copytree(pool["digits"], tmp_path / "gateless")
    (gateless / "gates.safetensors").unlink()
    with pytest.raises(ExpertError, match="train-gates"):
        local.add_expert("gateless", gateless)
    assert local.expert_names == ["digits", "words"]
    with pytest.raises(ExpertError, match="per-row adapters"):
        local.generate(["hi"], adapters=["digits"])


def test_global_embeddings_are_checked(pool):
    engine = MixtureEngine(pool["base"], _members(pool), alpha=1.0)
    with pytest.raises(ExpertError, match="2 embeddings for 1 prompts"):
        engine.generate(["hi"], embeddings=np.eye(2, 8))
    with pytest.raises(ExpertError, match="dim 4"):
        engine.generate(["hi"], embeddings=np.ones((1, 4)))
    bare = MixtureEngine(pool["base"], [MixtureMember(n, pool[n]) for n in EMBED], alpha=1.0)
    with pytest.raises(ExpertError, match="without an instruction embedding: digits, words"):
        bare.generate(["hi"], embeddings=np.ones((1, 8)))
    assert bare.generate(["hi"], GenerationParams(max_tokens=2))[0].completion_tokens > 0


def _specs(pool, tiny_lm, tiny_adapters) -> dict:
    from experts.spec import ExpertSpec

    rows = [
        {"id": "base", "model": str(pool["base"])},
        {"id": "other", "model": str(tiny_lm)},
        {"id": "digits", "kind": "lora", "base": "base", "adapter": str(pool["digits"])},
        {"id": "words", "kind": "lora", "base": "base", "adapter": str(pool["words"])},
        {"id": "alpha", "kind": "lora", "base": "other", "adapter": str(tiny_adapters["alpha"])},
    ]
    return {row["id"]: ExpertSpec.model_validate(row) for row in rows}


def test_load_mixture_from_specs(pool, tiny_lm, tiny_adapters):
    from experts.spec import ExpertSpec

    specs = _specs(pool, tiny_lm, tiny_adapters)

    def lookup(expert_id):
        if expert_id not in specs:
            raise UnknownExpertError(expert_id, list(specs))
        return specs[expert_id]

    def mixture(*members):
        return ExpertSpec(id="mix", kind="mixture", base="base", experts=list(members))

    embedded = []

    def embed(texts):
        embedded.extend(texts)
        return np.stack([EMBED[text] for text in texts])

    engine = load_mixture(mixture("digits", "words"), lookup, embed, alpha=1000.0)
    assert engine.expert_names == ["digits", "words"] and embedded == ["digits", "words"]
    q = np.stack([EMBED["words"]])
    steps = engine.generate(["apple"], GenerationParams(max_tokens=3), embeddings=q, trace=True)
    assert {step["top"] for step in steps[0].token_trace} == {"words"}
    with pytest.raises(UnknownExpertError, match="'ghost'"):
        load_mixture(mixture("digits", "ghost"), lookup)
    with pytest.raises(IncompatibleAdapterError, match="'alpha' sits on 'other', not 'base'"):
        load_mixture(mixture("digits", "alpha"), lookup)
    with pytest.raises(ExpertError, match="not a mixture"):
        load_mixture(specs["digits"], lookup)


def test_the_expert_loader_builds_mixtures(pool, tiny_lm, tiny_adapters, tmp_path):
    from experts.loader import ExpertLoader
    from experts.spec import ExpertSpec

    specs = _specs(pool, tiny_lm, tiny_adapters)
    specs["mix"] = ExpertSpec(id="mix", kind="mixture", base="base", experts=["digits", "words"])
    engine = ExpertLoader(specs.__getitem__).load("mix")
    assert isinstance(engine, MixtureEngine) and engine.expert_names == ["digits", "words"]
    fenced = ExpertLoader(specs.__getitem__, allowed_roots=[str(tmp_path)])
    with pytest.raises(ExpertError, match="outside the allowed roots"):
        fenced.load("mix")


def _crossed_embedder(asked: list[str]):
    """Instruction embeddings by expert name; a query's embedding points at the expert its
    text does *not* look like, so only the global term explains following that expert."""
    crossed = {"apple": "digits", "4821 3390": "words"}

    def embed(texts):
        asked.extend(texts)
        return np.stack([EMBED[crossed.get(text, text)] for text in texts])

    return embed


def test_a_served_mixture_row_brings_its_query_embedding(pool, tiny_lm, tiny_adapters):
    """The pool's batch logic: a mixture expert's rows are embedded (q = the query text)
    and, with α large, each row follows the expert nearest its q: that adapter's tokens."""
    from cluster.serve.messages import ExpertRequest
    from cluster.serve.pool_batch import Row, run_batch
    from experts.hf_engine import HFEngine
    from experts.loader import ExpertLoader, adapter_of
    from experts.spec import ExpertSpec

    specs = _specs(pool, tiny_lm, tiny_adapters)
    specs["mix"] = ExpertSpec(id="mix", kind="mixture", base="base", experts=["digits", "words"],
                              mixture={"alpha": 1000.0, "top_k": 1})
    asked: list[str] = []
    loader = ExpertLoader(specs.__getitem__, embed=_crossed_embedder(asked))
    engine = loader.load("mix")
    assert (engine.alpha, engine.top_k) == (1000.0, 1) and asked == ["digits", "words"]
    prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "apple"}],
               "4821 3390"]
    rows = [Row(ExpertRequest("mix", prompt, GenerationParams(max_tokens=4))) for prompt in prompts]
    results = run_batch(engine, rows, specs.__getitem__, loader.prepare, adapter_of,
                        embed=loader.embed)
    assert sorted(asked[2:]) == ["4821 3390", "apple"]  # one q per row
    single = HFEngine(str(pool["base"]))
    for name in ("words", "digits"):
        single.load_adapter(name, str(pool[name]))
    alone = single.generate(prompts, GenerationParams(max_tokens=4),
                            adapters=["digits", "words"])
    assert [r.text for r in results] == [out.text for out in alone]


def test_mixture_options_in_the_spec():
    from pydantic import ValidationError

    from experts.spec import ExpertSpec

    mix = ExpertSpec(id="mix", kind="mixture", base="b", experts=["x", "y"])
    assert mix.mixture is None
    with pytest.raises(ValidationError, match="`mixture` options need kind 'mixture'"):
        ExpertSpec(id="m", model="org/m", mixture={"alpha": 1.0})
    with pytest.raises(ValidationError, match="top_k=3 is more than its 2 experts"):
        ExpertSpec(id="mix", kind="mixture", base="b", experts=["x", "y"], mixture={"top_k": 3})
    with pytest.raises(ValidationError, match="alpha"):
        ExpertSpec(id="mix", kind="mixture", base="b", experts=["x"], mixture={"alpha": -1})
    with pytest.raises(ValidationError, match="extra"):
        ExpertSpec(id="mix", kind="mixture", base="b", experts=["x"], mixture={"beta": 1})
