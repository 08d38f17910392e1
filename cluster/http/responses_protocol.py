"""The OpenAI Responses API wire format, text only: ``POST /v1/responses`` requests, the
response object and its streamed events (what ``client.responses.create`` reads)."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cluster.http.protocol import ChatCompletionRequest, ChatMessage, ConclaveInfo, TextPart
from routing.options import RouteOptions


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputPart(_Lenient):
    type: Literal["input_text", "output_text", "text"] = "input_text"
    text: str


class InputMessage(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]

    def chat_message(self) -> ChatMessage:
        content = self.content if isinstance(self.content, str) else [
            TextPart(text=part.text) for part in self.content]
        return ChatMessage(role=self.role, content=content)


class ResponsesRequest(_Lenient):
    """``POST /v1/responses``: text input (a string or messages), text output."""

    model: str = Field(description="'conclave[:k=3,strategy=...]' or an expert id.")
    input: str | list[InputMessage] = Field(description="The new turn(s) of the conversation.")
    instructions: str | None = Field(
        None, description="A system message for this response (not carried to the next one).")
    previous_response_id: str | None = Field(
        None, description="Continue the stored conversation of this response (and its session).")
    store: bool = Field(True, description="Keep this response for previous_response_id.")
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None
    conclave: RouteOptions | None = Field(
        None, description="Routing options; they override the model string's.")

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[InputMessage]) -> str | list[InputMessage]:
        if not value or (isinstance(value, str) and not value.strip()):
            raise ValueError("input is empty")
        return value

    def new_messages(self) -> list[ChatMessage]:
        if isinstance(self.input, str):
            return [ChatMessage(role="user", content=self.input)]
        return [item.chat_message() for item in self.input]

    def chat(self, history: list[ChatMessage]) -> ChatCompletionRequest:
        """The chat request this response is answered as: instructions, the stored history,
        then the new input."""
        system = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        return ChatCompletionRequest(
            model=self.model, messages=[*system, *history, *self.new_messages()],
            max_tokens=self.max_output_tokens, temperature=self.temperature, top_p=self.top_p,
            user=self.user, conclave=self.conclave)


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str = Field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = Field(default_factory=list)


class ResponseUsage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: dict = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens_details: dict = Field(default_factory=lambda: {"reasoning_tokens": 0})


class ResponseObject(BaseModel):
    id: str = Field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["in_progress", "completed", "incomplete", "failed"] = "completed"
    model: str
    output: list[OutputMessage] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    error: dict | None = None
    incomplete_details: dict | None = None
    metadata: dict = Field(default_factory=dict)
    parallel_tool_calls: bool = False
    tool_choice: str = "none"
    tools: list = Field(default_factory=list)
    text: dict = Field(default_factory=lambda: {"format": {"type": "text"}})
    conclave: ConclaveInfo | None = None

    @classmethod
    def started(cls, req: ResponsesRequest) -> ResponseObject:
        """The response to ``req`` before its output (status in_progress)."""
        return cls(status="in_progress", model=req.model, instructions=req.instructions,
                   previous_response_id=req.previous_response_id, store=req.store,
                   max_output_tokens=req.max_output_tokens, temperature=req.temperature,
                   top_p=req.top_p, user=req.user)


__all__ = ["InputMessage", "OutputMessage", "OutputText", "ResponseObject", "ResponseUsage",
           "ResponsesRequest"]
