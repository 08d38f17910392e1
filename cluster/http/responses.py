"""``POST /v1/responses`` (the OpenAI Responses API, text in and out): each response is a
chat turn, answered by :class:`ConclaveService` as a chat completion is.

``previous_response_id`` continues a stored conversation: its messages come before the new
input and its session is the turn's session (unless the request names one: the
``x-session-id`` header, ``user``, ``conclave.session``). A conversation that names no
session is its own: the session id is its first response's id. ``store: false``: nothing
is kept, and the response cannot be continued. Unknown or expired ids: 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import ValidationError

from cluster.http.errors import ApiError, from_validation
from cluster.http.protocol import ChatCompletionRequest, ChatMessage
from cluster.http.response_store import REDIS_ERRORS, ResponseStore, StoredConversation
from cluster.http.responses_protocol import (
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from cluster.http.serving import ConclaveService, RoutedPrompt, Turn
from cluster.http.streaming import StreamBroken, error_body, streamed_text
from cluster.panel.panel import FinalAnswer

log = logging.getLogger(__name__)


@dataclass
class PendingResponse:
    """A response routed, not yet answered."""

    response: ResponseObject  # in progress
    chat: ChatCompletionRequest  # the whole conversation, as a chat request
    plan: RoutedPrompt


class ResponsesApi:
    """The Responses endpoint's logic over ``service`` (``store`` None: nothing stored,
    every ``previous_response_id`` unknown)."""

    def __init__(self, service: ConclaveService, store: ResponseStore | None):
        self._service, self._store = service, store

    async def prepare(self, req: ResponsesRequest, caller=None,
                      session_header: str | None = None) -> PendingResponse:
        """Route ``req`` (everything that can fail on bad input fails here: 4xx)."""
        stored = await self._previous(req.previous_response_id)
        try:
            chat = req.chat([ChatMessage(**m) for m in stored.messages] if stored else [])
        except ValidationError as err:  # e.g. no user turn in the conversation
            bad = from_validation(err.errors())
            raise ApiError(400, f"input: {bad.message}", param="input",
                           code="invalid_value") from None
        response = ResponseObject.started(req)
        turn = self._service.turn(chat, session_header)
        session = turn.session or (stored.session if stored else None) or (
            response.id if req.store else None)
        plan = await self._service.plan(chat.query(), chat.prompt(), chat, caller,
                                        Turn(turn.routed, session, turn.standalone))
        return PendingResponse(response, chat, plan)

    async def answer(self, pending: PendingResponse, sink=None) -> ResponseObject:
        """Answer it (text to ``sink`` as generated, if given), store it, return it whole."""
        return await self.finish(pending, await self.run(pending, sink))

    async def run(self, pending: PendingResponse, sink=None) -> FinalAnswer:
        return await self._service.run(pending.plan, sink)

    async def finish(self, pending: PendingResponse, out: FinalAnswer) -> ResponseObject:
        response = pending.response.model_copy(update={
            "status": "completed", "conclave": out.info,
            "output": [OutputMessage(content=[OutputText(text=out.text)])],
            "usage": ResponseUsage(input_tokens=out.usage.prompt_tokens,
                                   output_tokens=out.usage.completion_tokens,
                                   total_tokens=out.usage.total_tokens)})
        if response.store and self._store is not None:
            messages = [m for m in pending.chat.prompt() if m["role"] != "system"]
            messages.append({"role": "assistant", "content": out.text})
            session = out.info.session.id if out.info.session else None
            await self._save(response.id, StoredConversation(messages=messages, session=session))
        return response

    async def _previous(self, response_id: str | None) -> StoredConversation | None:
        if response_id is None:
            return None
        try:
            stored = (await asyncio.to_thread(self._store.load, response_id)
                      if self._store is not None else None)
        except REDIS_ERRORS:
            raise ApiError(503, "stored responses are unreachable; retry shortly",
                           type="api_error", code="store_unavailable",
                           headers={"Retry-After": "2"}) from None
        if stored is None:
            raise ApiError(404, f"Previous response with id {response_id!r} not found (unknown, "
                           "expired, or created with store: false).",
                           param="previous_response_id", code="previous_response_not_found")
        return stored

    async def _save(self, response_id: str, conversation: StoredConversation) -> None:
        try:
            await asyncio.to_thread(self._store.save, response_id, conversation)
        except REDIS_ERRORS as err:  # answered all the same; it cannot be continued
            log.warning("response %s not stored: %s", response_id, type(err).__name__)


async def response_events(api: ResponsesApi, pending: PendingResponse,
                          timeout_s: float) -> AsyncIterator[str]:
    """The Responses stream: created, the message's text deltas, then completed."""
    started, item = pending.response, OutputMessage(status="in_progress")
    where = {"item_id": item.id, "output_index": 0, "content_index": 0}
    seq = iter(range(1_000_000))

    def event(kind: str, **fields) -> str:
        body = {"type": kind, "sequence_number": next(seq), **fields}
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n"

    yield event("response.created", response=started.model_dump())
    yield event("response.output_item.added", output_index=0, item=item.model_dump())
    yield event("response.content_part.added", **where, part=OutputText(text="").model_dump())
    try:
        async with asyncio.timeout(timeout_s):
            async for piece in streamed_text(lambda sink: api.run(pending, sink)):
                if isinstance(piece, str):
                    yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
                    continue
                done = await api.finish(pending, piece)
                text = done.output[0].content[0]
                yield event("response.output_text.done", **where, text=text.text, logprobs=[])
                yield event("response.content_part.done", **where, part=text.model_dump())
                yield event("response.output_item.done", output_index=0,
                            item=done.output[0].model_dump())
                yield event("response.completed", response=done.model_dump())
    except (ApiError, StreamBroken, TimeoutError) as err:
        failed = started.model_copy(update={"status": "failed",
                                            "error": error_body(err, timeout_s)["error"]})
        yield event("response.failed", response=failed.model_dump())
