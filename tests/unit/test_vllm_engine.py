"""The vLLM engine on CPU, for real: one engine (the session's tiny LM and its three LoRA
adapters) shared by every test here, since each start spawns vLLM's engine process.

The crash test runs last in the file: it kills that engine's process and checks that the
rows caught by it are answered by the engine restarted in place.
"""

from __future__ import annotations

import asyncio
import json
import threading

import psutil
import pytest

from cluster.config import ConfigError, parse_config
from cluster.serve.messages import ExpertRequest
from cluster.serve.pool_batch import Row, run_continuous
from experts.engine import GenerationParams
from experts.errors import ExpertError, PromptTooLongError, UnsupportedFeatureError
from experts.loader import EngineChoice, ExpertLoader
from experts.spec import ExpertSpec

pytest.importorskip("vllm")

GREEDY = GenerationParams(max_tokens=8)
PROMPT = "what is the derivative of x squared"


@pytest.fixture(scope="module")
def engine(tiny_lm, tiny_adapters):
    from experts.vllm_engine import VLLMEngine

    engine = VLLMEngine(str(tiny_lm), max_loras=4, max_lora_rank=8,
                        engine_args={"max_model_len": 256})
    for name, path in tiny_adapters.items():
        engine.load_adapter(name, str(path))
    yield engine
    engine.close()
    # close() leaves no engine process behind (a child of a restarted engine may take a
    # while, on a loaded machine, to see its parent gone and exit)
    _, alive = psutil.wait_procs(_engine_processes(), timeout=60)
    assert not alive, [(p.pid, _parent(p), _cmdline(p)) for p in alive]


def test_a_mixed_adapter_batch_matches_each_adapter_alone(engine):
    adapters = [None, "alpha", "beta", "gamma", "alpha", None]
    mixed = engine.generate([PROMPT] * len(adapters), GREEDY, adapters)
    alone = [engine.generate([PROMPT], GREEDY, [a])[0] for a in adapters]
    assert [m.text for m in mixed] == [a.text for a in alone]
    assert len({m.text for m in mixed[:4]}) == 4  # the adapters do change the output
    assert all(m.completion_tokens == 8 and m.prompt_tokens > 0 for m in mixed)


def test_streamed_deltas_join_to_the_final_text(engine):
    deltas: dict[int, list[str]] = {0: [], 1: []}
    outs = engine.generate_streaming([PROMPT, "tell me about the ottoman empire"], GREEDY,
                                     ["beta", None], on_text=lambda r, d: deltas[r].append(d))
    for row, out in enumerate(outs):
        assert "".join(deltas[row]) == out.text and len(deltas[row]) > 1


def test_stop_strings_end_the_answer(engine):
    full = engine.generate([PROMPT], GenerationParams(max_tokens=16), ["alpha"])[0].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop.strip(), full
    cut = engine.generate([PROMPT], GenerationParams(max_tokens=16, stop=[stop]),
                          ["alpha"])[0]
    assert stop not in cut.text and full.startswith(cut.text) and cut.finish_reason == "stop"


def test_json_schema_output_validates_even_from_a_random_model(engine):
    import jsonschema

    # bounded values: a random model would extend an unbounded integer forever
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                               "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    params = GenerationParams(max_tokens=64, response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    out = engine.generate([PROMPT], params, ["gamma"])[0]
    jsonschema.validate(json.loads(out.text), schema)


def test_a_forced_tool_call_is_valid_json_for_that_tool(engine):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"enum": [1, 2, 3]}}, "required": ["a"],
        "additionalProperties": False}}}]
    named = GenerationParams(max_tokens=48, tools=tools,
                             tool_choice={"type": "function", "function": {"name": "add"}})
    assert json.loads(engine.generate([PROMPT], named)[0].text)["a"] in (1, 2, 3)
    required = GenerationParams(max_tokens=64, tools=tools, tool_choice="required")
    calls = json.loads(engine.generate([PROMPT], required)[0].text)
    assert calls and all(call["name"] == "add" for call in calls)
    with pytest.raises(UnsupportedFeatureError, match="tool parser"):
        engine.generate([PROMPT], GenerationParams(tools=tools, tool_choice="auto"))


def test_tool_choice_auto_reads_the_calls_with_the_model_familys_tool_parser(engine):
    from experts.vllm_tools import ToolCallParser

    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    parser = ToolCallParser("hermes", engine.tokenizer)
    content, calls = parser.parse(
        'Adding. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>', tools)
    assert content == "Adding. " and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["id"]
    assert calls[0]["function"] == {"name": "add", "arguments": '{"a": 1}'}
    assert parser.parse("no call here", tools) == ("no call here", None)

    auto = GenerationParams(max_tokens=8, tools=tools, tool_choice="auto")
    engine.tool_parser = parser  # as an expert with tool_parser: hermes loads it
    try:
        out = engine.generate([PROMPT], auto)[0]  # free text: this random model calls nothing
        assert out.completion_tokens == 8 and out.text and out.tool_calls is None
        with pytest.raises(UnsupportedFeatureError, match="not streamed"):
            engine.generate_streaming([PROMPT], auto, on_text=lambda _row, _delta: None)
    finally:
        engine.tool_parser = None


def test_an_unknown_tool_parser_is_refused_naming_vllms():
    with pytest.raises(ValueError, match=r"unknown tool parser 'nosuch'; vLLM's: .*hermes"):
        ExpertSpec(id="m", model="org/m", tool_parser="nosuch")
    assert ExpertSpec(id="m", model="org/m", tool_parser="hermes").tool_parser == "hermes"


def test_logprobs_come_per_token(engine):
    out = engine.generate([PROMPT], GenerationParams(max_tokens=4, logprobs=2))[0]
    assert len(out.logprobs) == 4
    assert all(len(step["top_logprobs"]) == 2 and step["logprob"] <= 0 for step in out.logprobs)


def test_adapters_are_added_and_removed_at_runtime(engine, tiny_lm, tmp_path):
    from experts.tiny import add_random_lora

    path = add_random_lora(tiny_lm, tmp_path / "delta", seed=9)
    engine.load_adapter("delta", str(path))
    assert engine.generate([PROMPT], GREEDY, ["delta"])[0].text
    engine.unload_adapter("delta")
    assert "delta" not in engine.adapters
    with pytest.raises(ExpertError, match="not loaded"):
        engine.generate([PROMPT], GREEDY, ["delta"])


def test_a_prompt_longer_than_the_context_names_the_limit(engine):
    with pytest.raises(PromptTooLongError, match="context is 256 tokens"):
        engine.generate(["word " * 400], GREEDY)


def test_adapters_above_the_rank_limit_or_for_another_base_are_refused(tiny_lm, tmp_path):
    from experts.tiny import add_random_lora, build_tiny_lm

    other = build_tiny_lm(tmp_path / "other", ["some other text"], seed=3)
    specs = {"base": ExpertSpec(id="base", model=str(tiny_lm)),
             "wide": ExpertSpec(id="wide", kind="lora", base="base",
                                adapter=str(add_random_lora(tiny_lm, tmp_path / "w", rank=32))),
             "alien": ExpertSpec(id="alien", kind="lora", base="base",
                                 adapter=str(add_random_lora(other, tmp_path / "a")))}
    checks = ExpertLoader(specs.__getitem__, engines=EngineChoice(engine="vllm",
                                                                  max_lora_rank=16))
    with pytest.raises(ExpertError, match="rank 32, above this pool's max_lora_rank of 16"):
        checks.check_adapter(specs["wide"])
    with pytest.raises(ExpertError, match="is for base"):
        checks.check_adapter(specs["alien"])
    config = {"pools": [{"name": "default", "engine": "vllm", "max_lora_rank": 16}],
              "experts": [s.model_dump(mode="json") for s in specs.values() if s.id != "alien"]}
    with pytest.raises(ConfigError, match="max_lora_rank of 16"):
        parse_config(config)


def test_unknown_engine_args_are_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="no engine argument 'max_modle_len'"):
        parse_config({"pools": [{"name": "default", "engine_args": {"max_modle_len": 64}}]})
    with pytest.raises(ConfigError, match="'model' is set by Conclave"):
        parse_config({"pools": [{"name": "default", "engine_args": {"model": "x"}}]})


def test_a_model_vllm_cannot_load_fails_cleanly(tmp_path):
    from experts.vllm_engine import VLLMEngine

    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    before = _engine_processes()
    with pytest.raises(ExpertError, match="does not load in vLLM"):
        VLLMEngine(str(tmp_path))
    assert _engine_processes() <= before


def test_an_engine_process_killed_under_load_loses_no_request(engine):
    """Rows caught by the kill are retried on the restarted engine, except the streamed
    one whose text had gone out: it fails (a retry would stream its text again)."""
    specs = {"base": ExpertSpec(id="base", model=engine.model_name)}
    generating = threading.Event()  # set by the streamed row's first token: all are in
    rows = [Row(ExpertRequest("base", f"{PROMPT} {i}", GenerationParams(max_tokens=160)))
            for i in range(11)]
    rows.append(Row(ExpertRequest("base", PROMPT, GenerationParams(max_tokens=160)),
                    lambda _d: generating.set()))

    async def load_and_kill():
        running = asyncio.create_task(run_continuous(engine, rows, specs.__getitem__,
                                                     lambda _e, _s: None))
        assert await asyncio.to_thread(generating.wait, 120)
        for process in _engine_processes():
            process.kill()
        return await running

    replies = asyncio.run(load_and_kill())
    assert engine.restarts == 1 and not engine.errored
    assert all(reply.error is None and reply.text for reply in replies[:11]), replies
    assert "died while this answer streamed" in str(replies[11].error)
    assert engine.generate([PROMPT], GREEDY)[0].completion_tokens == 8


def _engine_processes() -> set:
    """vLLM engine-core processes under this test process."""
    return {p for p in psutil.Process().children(recursive=True)
            if "EngineCore" in " ".join(_cmdline(p))}


def _parent(process) -> int | None:
    try:
        return process.ppid()
    except psutil.Error:
        return None


def _cmdline(process) -> list[str]:
    try:
        return [process.name(), *process.cmdline()]
    except psutil.Error:
        return []
