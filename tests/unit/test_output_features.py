"""Constrained and extra outputs: request fields to params, forced tool calls back to
OpenAI ``tool_calls``, and an engine that cannot honour a feature refusing it."""

from __future__ import annotations

import json

import pytest

from cluster.http.errors import ApiError
from cluster.http.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    feature_params,
    tool_calls,
)
from cluster.serve.messages import ExpertReply, ExpertRequest
from cluster.serve.pool_batch import Row, run_batch
from experts.engine import GenerationEngine, GenerationParams
from experts.errors import UnsupportedFeatureError
from experts.spec import ExpertSpec

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="conclave", messages=[{"role": "user", "content": "hi"}],
                                 **fields)


def test_request_fields_become_params_and_bad_formats_are_400():
    params = feature_params(chat(response_format={"type": "json_object"}, logprobs=True,
                                 top_logprobs=3, tools=TOOLS, tool_choice="required"))
    assert params == {"response_format": {"type": "json_object"}, "logprobs": 3,
                      "tools": TOOLS, "tool_choice": "required"}
    assert feature_params(chat(response_format={"type": "text"}, logprobs=False)) == {}
    assert feature_params(chat(tools=TOOLS))["tool_choice"] == "auto"
    assert feature_params(CompletionRequest(model="x", prompt="p", logprobs=0)) == {"logprobs": 0}
    with pytest.raises(ApiError, match="response_format.type must be one of"):
        feature_params(chat(response_format={"type": "yaml"}))
    asked = chat(max_tokens=4, temperature=0.5, stop="x", response_format={"type": "json_object"})
    made = asked.generation_params()
    assert made.model_fields_set == {"max_tokens", "temperature", "stop", "response_format"}
    assert made.stop == ["x"]
    drafted = made.without("response_format")  # a draft of a synthesis: free text
    assert drafted.model_fields_set == {"max_tokens", "temperature", "stop"}
    assert drafted.response_format is None


def test_a_request_sets_only_what_it_names_and_the_experts_defaults_fill_the_rest():
    defaults = GenerationParams(max_tokens=24, temperature=0.2, stop=["\n\n"])
    merged = chat(max_completion_tokens=5, seed=3).generation_params().over(defaults)
    assert (merged.max_tokens, merged.temperature, merged.stop, merged.seed) == (5, 0.2,
                                                                                   ["\n\n"], 3)
    assert chat().generation_params().over(defaults) == defaults


def test_forced_tool_calls_become_openai_tool_calls():
    named = GenerationParams(tools=TOOLS,
                             tool_choice={"type": "function", "function": {"name": "add"}})
    [call] = tool_calls(named, '{"a": 1}')
    assert call["function"] == {"name": "add", "arguments": json.dumps({"a": 1})}
    calls = tool_calls(GenerationParams(tools=TOOLS, tool_choice="required"),
                       '[{"name": "add", "parameters": {"a": 2}}]')
    assert [c["function"]["name"] for c in calls] == ["add"]
    assert tool_calls(named, '{"a": ') is None  # cut by max_tokens: plain text
    assert tool_calls(GenerationParams(), '{"a": 1}') is None


def test_the_forced_call_schema_is_vllms_and_a_bad_choice_is_refused():
    from experts.vllm_engine import tool_call_schema

    assert tool_call_schema(TOOLS, {"type": "function", "function": {"name": "add"}}) == {
        "type": "object"}
    required = tool_call_schema(TOOLS, "required")
    assert required["type"] == "array" and required["minItems"] == 1
    assert required["items"]["anyOf"][0]["properties"]["name"]["enum"] == ["add"]
    with pytest.raises(UnsupportedFeatureError, match="tool_choice"):
        tool_call_schema(TOOLS, {"type": "function", "function": {"name": "ghost"}})
    with pytest.raises(UnsupportedFeatureError, match="tool_choice must be"):
        tool_call_schema(TOOLS, "sometimes")


class _Echo(GenerationEngine):
    name = "echo"

    def generate(self, prompts, params=None, adapters=None):
        raise AssertionError("a refused row must not generate")


def test_an_engine_refuses_what_it_cannot_honour_as_a_client_error():
    params = GenerationParams(response_format={"type": "json_object"})
    with pytest.raises(UnsupportedFeatureError, match="echo engine does not support"):
        _Echo().check_features(params)
    spec = ExpertSpec(id="e", model="org/model")
    [reply] = run_batch(_Echo(), [Row(ExpertRequest("e", "hi", GenerationParams(logprobs=1)))],
                        lambda _: spec, lambda *_: None, lambda _: None)
    assert reply.request_fault and "does not support logprobs" in str(reply.error)
    assert not ExpertReply.failed("e", RuntimeError("boom")).request_fault
