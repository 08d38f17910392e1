"""The pool's batch logic without Ray: groups by sampling parameters and prompt length."""

from __future__ import annotations

from cluster.ops.tracing import RequestIdFilter, TraceContext
from cluster.serve.messages import ExpertRequest
from cluster.serve.pool_batch import Row, length_chunks, run_batch
from experts.engine import Generation, GenerationEngine, GenerationParams
from experts.loader import adapter_of
from experts.spec import ExpertSpec

SPECS = {
    "base": ExpertSpec(id="base", model="org/base"),
    "lora": ExpertSpec(id="lora", kind="lora", base="base", adapter="org/adapter"),
}


class RecordingEngine(GenerationEngine):
    """Echoes each prompt and records every generate call's rows and adapters."""

    def __init__(self):
        self.calls: list[tuple[list, list]] = []

    def generate(self, prompts, params=None, adapters=None):
        self.calls.append((list(prompts), list(adapters or [])))
        return [Generation(text=f"re: {p}", prompt_tokens=len(p), completion_tokens=2)
                for p in prompts]

    def memory_bytes(self) -> int:
        return 0

    def close(self) -> None:
        pass



def row(expert: str, prompt: str, params: dict | None = None, sink=None,
        request_id: str | None = None) -> Row:
    trace = TraceContext(request_id=request_id) if request_id else None
    return Row(ExpertRequest(expert, prompt, GenerationParams(**(params or {})), trace=trace), sink)


def test_length_chunks_cut_where_a_prompt_outgrows_its_chunk():
    items = ["a" * n for n in (40, 10, 200, 12, 31, 700)]
    chunks = length_chunks(items, [len(item) for item in items])
    assert [[len(item) for item in chunk] for chunk in chunks] == [[10, 12], [31, 40], [200],
                                                                   [700]]
    assert length_chunks([], []) == []


def test_short_and_long_prompts_generate_apart_and_answers_keep_their_rows():
    engine = RecordingEngine()
    long = "Response 1: " + "words " * 60
    rows = [row("base", "short one"), row("lora", long), row("lora", "short two"),
            row("base", "different params", {"max_tokens": 3}), row("ghost", "x")]

    def spec_of(expert_id):
        return SPECS[expert_id]  # KeyError for the unknown expert: that row fails alone

    results = run_batch(engine, rows, spec_of, lambda engine, spec: None, adapter_of)
    assert [r.text for r in results[:4]] == [f"re: {r.request.prompt}" for r in rows[:4]]
    assert "KeyError" in str(results[4].error) and not results[4].request_fault
    assert sorted(engine.calls) == sorted([
        (["short one", "short two"], [None, "lora"]),
        ([long], ["lora"]),
        (["different params"], [None]),
    ])


class StreamingRecorder(RecordingEngine):
    """Also records which prompts went through ``generate_streaming``."""

    def __init__(self):
        super().__init__()
        self.streamed: list[list] = []

    def generate_streaming(self, prompts, params=None, adapters=None, on_text=None, **extra):
        self.streamed.append(list(prompts))
        return super().generate_streaming(prompts, params, adapters, on_text, **extra)


def test_rows_with_a_sink_get_their_own_text_and_the_same_results():
    got: dict[str, list[str]] = {"a": [], "c": []}

    def broken(delta):
        raise ConnectionError("client went away")

    def rows(sinks: bool) -> list[Row]:
        return [row("base", "a", {}, got["a"].append if sinks else None),
                row("lora", "b"),
                row("base", "c", {"max_tokens": 3}, got["c"].append if sinks else None),
                row("base", "d", {"max_tokens": 5}, broken if sinks else None),
                row("lora", "e", {"max_tokens": 5})]

    def run(engine, batch):
        return run_batch(engine, batch, SPECS.__getitem__, lambda engine, spec: None, adapter_of)

    plain, streaming = RecordingEngine(), StreamingRecorder()
    assert run(streaming, rows(True)) == run(plain, rows(False))
    assert got == {"a": ["re: a"], "c": ["re: c"]}
    assert sorted(streaming.calls) == sorted(plain.calls)  # same batches either way
    assert sorted(streaming.streamed) == [["a", "b"], ["c"], ["d", "e"]]
    assert run(streaming, rows(False)) and len(streaming.streamed) == 3  # no sink: generate


def test_a_dropped_sink_is_logged_under_its_own_request_id(caplog):
    def broken(delta):
        raise ConnectionError("client went away")

    caplog.handler.addFilter(RequestIdFilter())
    rows = [row("base", "a", {}, broken, request_id="req-a"),
            row("base", "b", {}, lambda delta: None, request_id="req-b")]
    with caplog.at_level("WARNING", logger="cluster.serve.pool_batch"):
        results = run_batch(StreamingRecorder(), rows, SPECS.__getitem__,
                            lambda engine, spec: None, adapter_of)
    assert [r.text for r in results] == ["re: a", "re: b"]
    [record] = [r for r in caplog.records if "dropping the text sink" in r.getMessage()]
    assert record.request_id == "req-a"
