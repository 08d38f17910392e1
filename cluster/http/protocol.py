"""The OpenAI-compatible wire format Conclave speaks: requests, responses, streaming
chunks, model lists and error bodies (pydantic).

Requests ignore unknown fields (stock clients send extras such as ``stream_options``);
Conclave's own options ride in the ``model`` string or the ``conclave`` body field.

Constrained and extra outputs (``response_format``, ``logprobs``, ``tools``/``tool_choice``)
go from the request to its generation params (:meth:`generation_params`) and from the final answer
back to the response's ``tool_calls`` and ``logprobs``. Engines honour them or refuse them
with a 400 (:meth:`GenerationEngine.check_features`); they are never ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cluster.http.errors import ApiError
from experts.engine import GenerationParams
from routing.options import RouteOptions
from routing.sessions import ConversationConfig, RoutedText, SessionOutcome, routed_text


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, content: object) -> object:
        """Name the first part type Conclave cannot take (``image_url``, ``input_audio``,
        ``file``...) instead of pydantic's "Input should be a valid string"."""
        if not isinstance(content, list):
            return content
        for index, part in enumerate(content):
            if not isinstance(part, dict):
                raise ValueError(f"content part {index} is not an object")
            kind = part.get("type", "text")
            if kind != "text":
                raise ValueError(f"content part {index} has type {kind!r}, which is not "
                                 "supported: Conclave takes text parts only (no image, "
                                 "audio or file input)")
        return content

    def text(self) -> str:
        """The message's text (content parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _SamplingRequest(_Lenient):
    model: str = Field(description="'conclave[:k=3,strategy=...]' or an expert id.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per prompt is supported.")
    response_format: dict | None = Field(
        None, description="{'type': 'json_object'} or {'type': 'json_schema', 'json_schema': "
        "{'schema': ...}}: guided decoding (vLLM engines).")
    tools: list[dict] | None = Field(None, description="Functions the model may call.")
    tool_choice: str | dict | None = Field(
        None, description="'required' or {'type': 'function', 'function': {'name': ...}} force "
        "a call (guided decoding); 'auto' lets the model choose, and needs the expert's "
        "tool_parser (vLLM).")
    stream: bool = False
    user: str | None = None
    conclave: RouteOptions | None = Field(
        None, description="Routing options; they override the model string's.")

    def generation_params(self) -> GenerationParams:
        """The sampling settings this request sets, in one step (the expert's defaults fill
        the rest, in the pool replica: :meth:`GenerationParams.over`)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        asked = {"max_tokens": self.token_limit(), "temperature": self.temperature,
                 "top_p": self.top_p, "seed": self.seed, "stop": stop}
        return GenerationParams(**{key: value for key, value in asked.items()
                                   if value is not None}, **feature_params(self))


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="Return the chosen tokens' logprobs.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Alternatives per token.")

    @field_validator("messages")
    @classmethod
    def _has_text(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("messages need at least one 'user' message")
        if not any(m.text().strip() for m in messages if m.role == "user"):
            raise ValueError("the user message content is empty")
        return messages

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def query(self) -> str:
        """The last user message (what a synthesis answers)."""
        return next(m.text() for m in reversed(self.messages) if m.role == "user")

    def routed_text(self, config: ConversationConfig) -> RoutedText:
        """The text routed: the user turns (routing/sessions.py)."""
        return routed_text([m.text() for m in self.messages if m.role == "user"], config)

    def prompt(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20, description="Alternatives per token.")

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, prompt: str | list[str]) -> str | list[str]:
        items = [prompt] if isinstance(prompt, str) else prompt
        if not items or any(not p.strip() for p in items):
            raise ValueError("prompt is empty")
        return prompt

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def token_limit(self) -> int | None:
        return self.max_tokens


class RouteRequest(_Lenient):
    """``POST /v1/route``: a dry run; give ``query`` or chat ``messages``."""

    query: str | None = None
    messages: list[ChatMessage] | None = None
    model: str = "conclave"
    user: str | None = None
    conclave: RouteOptions | None = Field(
        None, description="Routing options; they override the model string's.")

    def text(self, config: ConversationConfig) -> RoutedText:
        if self.query is not None:
            return RoutedText(self.query, True)
        return routed_text([m.text() for m in self.messages or [] if m.role == "user"], config)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ExpertUse(BaseModel):
    id: str
    weight: float
    completion_tokens: int = 0
    replaces: str | None = Field(None, description="The expert it stood in for (failover).")


class Failover(BaseModel):
    expert: str = Field(description="The expert that failed.")
    replacement: str | None = Field(description="Who took its share; None: nobody left.")
    reason: str


class CascadeStep(BaseModel):
    expert: str = Field(description="The expert asked, in turn.")
    confidence: float = Field(description="Mean token log-probability of its answer.")
    kept: bool = Field(description="Whether its answer is the one returned.")


class SessionInfo(BaseModel):
    id: str
    outcome: SessionOutcome = Field(description="new, kept (the session's experts answer), "
                                    "switched (re-routed), stateless (store unreachable).")


class ConclaveInfo(BaseModel):
    """What the panel did for one answer."""

    experts: list[ExpertUse]
    strategy: str
    aggregation: str = Field(description="single, vote, synthesis, best or cascade.")
    aggregator: str | None = Field(None, description="The expert that synthesised, if any.")
    cache: Literal["hit", "miss", "off", "direct"]
    failovers: list[Failover] = Field(default_factory=list)
    routing_ms: float = 0.0
    request_id: str | None = Field(None, description="The x-request-id of this request.")
    cascade: list[CascadeStep] | None = Field(
        None, description="k=cascade: each expert asked, its answer's confidence, which kept.")
    session: SessionInfo | None = Field(None, description="The session's decision, if any.")


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: str
    logprobs: dict | None = Field(None, description="{'content': [per-token logprobs]}.")


def new_id(prefix: str) -> str:
    """A response id in OpenAI's style (``chatcmpl-…``, ``cmpl-…``)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _now() -> int:
    return int(time.time())


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: Usage
    conclave: ConclaveInfo | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: Any = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    conclave: list[ConclaveInfo] | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None


class _Chunk(BaseModel):
    """What every streamed event carries (usage and the panel's info come in the last)."""

    id: str
    created: int = Field(default_factory=_now)
    model: str
    usage: Usage | None = None


class ChatCompletionChunk(_Chunk):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    conclave: ConclaveInfo | None = None


class CompletionChunk(_Chunk):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    conclave: list[ConclaveInfo] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "conclave"
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


FORMATS = ("text", "json_object", "json_schema")


def feature_params(req) -> dict:
    """The request's feature fields as generation params (only those it sets)."""
    params = {}
    fmt = req.response_format
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in FORMATS:
            raise ApiError(400, f"response_format.type must be one of {', '.join(FORMATS)}",
                           param="response_format", code="invalid_value")
        if fmt["type"] != "text":
            params["response_format"] = fmt
    top = top_logprobs(req)
    if top is not None:
        params["logprobs"] = top
    if req.tools:
        params["tools"] = req.tools
        params["tool_choice"] = req.tool_choice or "auto"  # OpenAI's default with tools
    return params


def top_logprobs(req) -> int | None:
    """How many alternatives per token the request wants (0: the chosen only), or None."""
    if isinstance(req.logprobs, bool):  # chat: logprobs=true, top_logprobs=N
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs  # completions: logprobs=N


def tool_calls(params: GenerationParams, text: str) -> list[dict] | None:
    """The forced tool call(s) in ``text`` (guided JSON), as OpenAI ``tool_calls``; None
    when no call was forced or the text is not a whole call (cut by max_tokens)."""
    choice = params.tool_choice
    if not params.tools or choice in (None, "none", "auto"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(choice, dict):
        calls = [{"name": choice["function"]["name"], "parameters": value}]
    else:
        calls = value
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["parameters"])}}
            for call in calls]
