"""Live text: the batch streamer's rules on a byte-level toy, then a real tiny LM with LoRA
rows streamed in one batch, the engine default, and run_batch with some rows streamed.

The invariant everywhere: a row's deltas, joined, are exactly its Generation's text."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from cluster.serve.messages import ExpertRequest
from cluster.serve.pool_batch import Row, run_batch
from experts.engine import Generation, GenerationEngine, GenerationParams
from experts.loader import adapter_of
from experts.spec import ExpertSpec
from experts.streaming import BatchTextStreamer, RowCut

PROMPTS = ["what is the derivative of x squared", "def add(a, b):", "the patient", "7 * 6 ="]
ADAPTERS = [None, "alpha", "beta", None]
GREEDY = GenerationParams(max_tokens=12)
EOS, PAD = 0, 1


def collect():
    """A TextSink that keeps every delta, by row."""
    deltas: dict[int, list[str]] = defaultdict(list)
    return deltas, lambda row, delta: deltas[row].append(delta)


# -- the streamer's rules, on token ids that are UTF-8 bytes ----------------------------


def byte_cut(stop=()) -> RowCut:
    def decode(ids):  # EOS and PAD are "special": skipped, like skip_special_tokens
        return bytes(t for t in ids if t > PAD).decode("utf-8", errors="replace")

    return RowCut(decode=decode, eos=frozenset({EOS}), pad=PAD, stop=tuple(stop))


def stream(rows: list[list[int]], cut: RowCut, column: bool = False, end: bool = True):
    """Feed ``rows`` (equal lengths) step by step as generate does; deltas by row."""
    deltas, sink = collect()
    streamer = BatchTextStreamer(cut, len(rows), sink)
    streamer.put(torch.tensor([[5, 6]] * len(rows)))  # the prompt: skipped
    for step in zip(*rows, strict=True):
        value = torch.tensor(step)
        streamer.put(value[:, None] if column else value)
    if end:
        streamer.end()
    return deltas


def test_multibyte_characters_wait_for_their_last_byte():
    text = "aé中b"
    row = list(text.encode())
    deltas = stream([row], byte_cut())
    assert "".join(deltas[0]) == text
    assert deltas[0] == ["a", "é", "中", "b"]
    assert not any(d.endswith("\ufffd") for d in deltas[0])


def test_eos_ends_a_row_and_the_pads_after_it_are_ignored():
    rows = [[*b"hi", EOS, PAD, PAD], [*b"hello"]]
    deltas = stream(rows, byte_cut(), column=True)  # [rows, 1] per step works too
    assert [deltas[0], "".join(deltas[1])] == [["h", "i"], "hello"]
    assert [byte_cut().text(r)[0] for r in rows] == ["hi", "hello"]
    held = stream(rows, byte_cut(["zzz"]), end=False)  # "zzz" holds back 2 chars...
    assert ["".join(held[0]), "".join(held[1])] == ["hi", "hel"]  # ...but EOS ends row 0


def test_stop_strings_are_held_back_and_never_sent():
    cut = byte_cut(["STOP", "x"])
    row = list(b"abcSTOPdef")
    deltas = stream([row], cut)
    assert "".join(deltas[0]) == cut.text(row)[0] == "abc"
    assert all("STOP" not in d for d in deltas[0])
    partial = list(b"abcST")  # "ST" may begin "STOP": held until it cannot
    assert cut.settled(partial) == "ab"
    assert "".join(stream([partial], cut)[0]) == "abcST"  # the end flushes what is held


def test_a_longer_stop_starting_earlier_wins():
    cut = byte_cut(["b", "abc"])
    assert cut.settled(list(b"xab")) == "x"  # "abc" may still complete at index 1
    row = list(b"xabcd")
    assert "".join(stream([row], cut)[0]) == cut.text(row)[0] == "x"


# -- a real tiny LM with LoRA adapters ---------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_lm, tiny_adapters):
    from experts.hf_engine import HFEngine

    engine = HFEngine(str(tiny_lm))
    for name in ("alpha", "beta"):
        engine.load_adapter(name, str(tiny_adapters[name]))
    yield engine
    engine.close()


def test_mixed_adapter_batch_streams_every_row(engine):
    deltas, sink = collect()
    streamed = engine.generate_streaming(PROMPTS, GREEDY, ADAPTERS, on_text=sink)
    assert streamed == engine.generate(PROMPTS, GREEDY, ADAPTERS)
    assert len({g.text for g in streamed}) > 1, "adapters should change the output"
    for row, generation in enumerate(streamed):
        assert "".join(deltas[row]) == generation.text
        if generation.completion_tokens > 1:
            assert len(deltas[row]) > 1, f"row {row} came in one piece: not streamed"


def test_streamed_stop_string_is_never_sent(engine):
    full = engine.generate(PROMPTS, GREEDY, ADAPTERS)
    row = max(range(len(full)), key=lambda i: len(set(full[i].text)))  # the liveliest
    text = full[row].text
    pieces = (text[i : i + 3] for i in range(len(text) - 2))
    stop = next(p for p in pieces if text.find(p) >= 5 and p.strip() and "\ufffd" not in p)
    params = GenerationParams(max_tokens=12, stop=[stop])
    deltas, sink = collect()
    streamed = engine.generate_streaming(PROMPTS, params, ADAPTERS, on_text=sink)
    assert streamed == engine.generate(PROMPTS, params, ADAPTERS)
    assert streamed[row].text == text[: text.find(stop)]
    assert streamed[row].finish_reason == "stop" and len(deltas[row]) > 1
    for i, generation in enumerate(streamed):
        assert "".join(deltas[i]) == generation.text
        assert all(stop not in delta for delta in deltas[i])


def test_run_batch_streams_only_the_rows_with_a_sink(engine):
    specs = {"base": ExpertSpec(id="base", model="m"),
             **{n: ExpertSpec(id=n, kind="lora", base="base", adapter=n) for n in ("alpha", "beta")}}
    experts = [a or "base" for a in ADAPTERS]
    got: dict[int, list[str]] = defaultdict(list)

    def rows(with_sinks: bool) -> list[Row]:
        return [Row(ExpertRequest(expert, prompt, GenerationParams(max_tokens=12)),
                    got[i].append if with_sinks and i % 2 else None)
                for i, (expert, prompt) in enumerate(zip(experts, PROMPTS, strict=True))]

    def run(batch):
        return run_batch(engine, batch, specs.__getitem__, lambda e, s: None, adapter_of)

    streamed = run(rows(True))
    assert streamed == run(rows(False))
    assert sorted(got) == [1, 3]
    for i in got:
        assert "".join(got[i]) == streamed[i].text


# -- engines that cannot stream ----------------------------------------------------------


class WholeEngine(GenerationEngine):
    """Answers at once; the empty prompt gets an empty answer."""

    def generate(self, prompts, params=None, adapters=None, suffix="!"):
        return [Generation(p and p.upper() + suffix, len(p), 1) for p in prompts]


def test_the_default_sends_each_row_whole_once():
    deltas, sink = collect()
    outputs = WholeEngine().generate_streaming(["ab", "", "c"], on_text=sink, suffix="?")
    assert [o.text for o in outputs] == ["AB?", "", "C?"]
    assert dict(deltas) == {0: ["AB?"], 2: ["C?"]}
    assert WholeEngine().generate_streaming(["x"])[0].text == "X!"  # no sink: plain
