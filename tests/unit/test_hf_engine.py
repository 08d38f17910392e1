"""HFEngine on tiny random LMs built here (no download)."""

from __future__ import annotations

import pytest
from sample_texts import TINY_TEXTS

from experts.engine import GenerationParams
from experts.errors import ExpertError

PROMPTS = [
    "what is the derivative of x",
    "def add",
    "the patient presents with fever and cough and",
    "7 * 6",
]
GREEDY = GenerationParams(max_tokens=10)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A tiny LM with a chat template, initialised so greedy output depends on the prompt."""
    from experts.hf_engine import HFEngine
    from experts.tiny import build_tiny_lm

    path = build_tiny_lm(tmp_path_factory.mktemp("lively"), TINY_TEXTS, seed=3, init_std=0.2)
    return HFEngine(str(path))


@pytest.fixture(scope="module")
def plain_engine(tmp_path_factory):
    """The same kind of LM without a chat template."""
    from experts.hf_engine import HFEngine
    from experts.tiny import build_tiny_lm

    root = tmp_path_factory.mktemp("plain")
    path = build_tiny_lm(root, TINY_TEXTS, seed=4, init_std=0.2, chat_template=False)
    return HFEngine(str(path))


def test_left_padded_batch_equals_one_at_a_time(engine):
    batch = engine.generate(PROMPTS, GREEDY)
    alone = [engine.generate([prompt], GREEDY)[0] for prompt in PROMPTS]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert [g.completion_tokens for g in batch] == [g.completion_tokens for g in alone]
    assert len({g.text for g in batch}) > 1, "outputs should depend on the prompt"
    assert engine.tokenizer.padding_side == "left"


def test_chat_template_is_applied(engine):
    rendered = "<|user|>\nhello there\n<|assistant|>\n"
    expected = len(engine.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    as_text = engine.generate(["hello there"], GREEDY)[0]
    as_messages = engine.generate([[{"role": "user", "content": "hello there"}]], GREEDY)[0]
    assert as_text.prompt_tokens == expected == as_messages.prompt_tokens
    assert as_text.text == as_messages.text


def test_plain_prompt_without_template(plain_engine):
    prompt = "the contract is void"
    result = plain_engine.generate([prompt], GREEDY)[0]
    assert result.prompt_tokens == len(plain_engine.tokenizer(prompt)["input_ids"])
    transcript = plain_engine.generate([[{"role": "user", "content": prompt}]], GREEDY)[0]
    assert transcript.prompt_tokens > result.prompt_tokens  # "user: ...\nassistant:"


def test_token_counts_and_length_finish(engine):
    results = engine.generate(PROMPTS[:2], GenerationParams(max_tokens=7))
    for result in results:
        assert result.completion_tokens == 7 and result.finish_reason == "length"
        assert result.prompt_tokens > 0


def test_stop_string_truncates(engine):
    full = engine.generate([PROMPTS[0]], GenerationParams(max_tokens=16))[0].text
    stop = next(ch for ch in full[3:] if ch.isascii() and ch.isprintable() and ch != " ")
    cut = engine.generate([PROMPTS[0]], GenerationParams(max_tokens=16, stop=[stop]))[0]
    assert cut.text == full[: full.find(stop)]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < 16


def test_seeded_sampling_is_reproducible(engine):
    def sample(seed):
        params = GenerationParams(max_tokens=12, temperature=1.0, seed=seed)
        return engine.generate(PROMPTS[:2], params)

    assert [g.text for g in sample(1)] == [g.text for g in sample(1)]
    assert [g.text for g in sample(1)] != [g.text for g in sample(2)]


def test_empty_batch_and_bad_inputs(engine):
    assert engine.generate([]) == []
    with pytest.raises(ExpertError, match="1 adapters for 2 prompts"):
        engine.generate(PROMPTS[:2], GREEDY, adapters=[None])
    with pytest.raises(ExpertError, match="not loaded: nope"):
        engine.generate(PROMPTS[:1], GREEDY, adapters=["nope"])


def test_missing_model_is_a_clear_error(tmp_path):
    from experts.hf_engine import HFEngine

    with pytest.raises(ExpertError, match="does not load"):
        HFEngine(str(tmp_path / "empty"))


def test_memory_and_close(tmp_path):
    from experts.hf_engine import HFEngine
    from experts.tiny import build_tiny_lm

    engine = HFEngine(str(build_tiny_lm(tmp_path / "m", TINY_TEXTS[:6], vocab_size=300)))
    assert engine.memory_bytes() > 10_000
    engine.close()
    engine.close()
    assert engine.memory_bytes() == 0


def test_engines_loaded_in_threads_at_once_all_get_their_weights(tmp_path):
    """A pool replica preloads its engines side by side: loads running in threads at once
    must not leave a model on the meta device (transformers' loading patches are
    process-wide)."""
    from concurrent.futures import ThreadPoolExecutor

    from experts.hf_engine import HFEngine
    from experts.tiny import build_tiny_lm

    paths = [str(build_tiny_lm(tmp_path / f"m{i}", TINY_TEXTS[:6], vocab_size=300, seed=i))
             for i in range(4)]
    for _ in range(3):
        with ThreadPoolExecutor(4) as pool:
            engines = list(pool.map(HFEngine, paths))
        for engine in engines:
            assert not any(p.is_meta for p in engine.model.parameters())
            assert engine.generate(["7 * 6"], GREEDY)[0].completion_tokens > 0
