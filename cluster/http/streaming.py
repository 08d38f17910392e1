"""Server-sent events that carry an answer while it is being generated.

The prompt is routed before the response starts (:meth:`ConclaveService.plan`), so bad
input still gets a 4xx. Then the panel runs with a sink: when one call writes the final
answer (a lone expert, or the synthesis over the panel's answers) its tokens reach the
client as the pool generates them, inside the same batch as everyone else's rows. An
answer that is picked rather than written (a vote, or the fallback after a failed
synthesis) exists only once the panel is done, and is then sent in word-sized pieces.

Failures after the response started cannot change its status any more: they arrive as
an OpenAI-style ``{"error": {...}}`` event, then ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from cluster.http.errors import ApiError, ErrorBody, ErrorResponse, timeout_error
from cluster.http.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    Usage,
    new_id,
)
from cluster.http.serving import ConclaveService, RoutedPrompt, add_usage, session_headers
from cluster.panel.panel import FinalAnswer
from cluster.panel.sink_stream import DeltaSink, Finished, sink_stream

DONE = "data: [DONE]\n\n"


class StreamBroken(Exception):
    """Text went out that the final answer does not continue (an expert failed mid-way
    and a stand-in answered instead): what the client has cannot be corrected."""


async def streamed_text(run: Callable[[DeltaSink], Awaitable[FinalAnswer]]) -> AsyncIterator[str | FinalAnswer]:
    """Yield each text delta as ``run``'s sink receives it, then whatever of the final
    text was not streamed, then the :class:`FinalAnswer` itself."""
    sent: list[str] = []
    async with aclosing(sink_stream(run)) as items:  # closing it stops the panel's work
        async for item in items:
            if isinstance(item, Finished):
                outcome = item.result
            else:
                sent.append(item)
                yield item
    emitted = "".join(sent)
    done = emitted.strip()  # the final text is stripped of the whitespace around it
    continues = outcome.text.startswith(done)
    # A reasoning model's streamed <think> part, cut from the final text, is fine.
    if outcome.interrupted or not (continues or done.endswith(outcome.text)):
        raise StreamBroken("an expert failed mid-answer; the text above is incomplete")
    if continues:
        rest = outcome.text[len(done):]
        for piece in pieces(rest.lstrip() if emitted[-1:].isspace() else rest):
            yield piece
    yield outcome


def pieces(text: str) -> list[str]:
    """``text`` cut after each space, for streaming an answer that is already whole."""
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)] if text else []


def sse(model: object) -> str:
    return f"data: {model.model_dump_json()}\n\n"


def error_event(err: Exception, timeout_s: float) -> str:
    return f"data: {json.dumps(error_body(err, timeout_s))}\n\n"


def error_body(err: Exception, timeout_s: float) -> dict:
    """The OpenAI error body of a failure after a stream started."""
    if isinstance(err, ApiError):
        return err.body()
    if isinstance(err, TimeoutError):
        return timeout_error(timeout_s).body()
    return ErrorResponse(error=ErrorBody(message=str(err), type="api_error",
                                         code="stream_broken")).model_dump()


async def chat_events(service: ConclaveService, model: str, plan: RoutedPrompt,
                      timeout_s: float) -> AsyncIterator[str]:
    """A streamed chat completion: the role, live content deltas, then the finish reason
    with usage and the ``conclave`` field, then ``[DONE]``."""
    common = {"id": new_id("chatcmpl"), "model": model, "created": int(time.time())}
    yield sse(ChatCompletionChunk(**common, choices=[
        ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))]))
    answer = streamed_text(lambda sink: service.run(plan, sink))
    try:
        async with asyncio.timeout(timeout_s), aclosing(answer):
            async for item in answer:
                if isinstance(item, str):
                    yield sse(ChatCompletionChunk(**common, choices=[
                        ChatChunkChoice(delta=ChatDelta(content=item))]))
                else:
                    yield sse(ChatCompletionChunk(
                        **common, usage=item.usage, conclave=item.info,
                        choices=[ChatChunkChoice(delta=ChatDelta(),
                                                 finish_reason=item.finish_reason)]))
    except (ApiError, StreamBroken, TimeoutError) as err:
        yield error_event(err, timeout_s)
    yield DONE


async def completion_events(service: ConclaveService, req: CompletionRequest,
                            plans: list[RoutedPrompt], timeout_s: float) -> AsyncIterator[str]:
    """Streamed completions, one prompt after another, each live; the last event carries
    the summed usage and every prompt's ``conclave`` field."""
    common = {"id": new_id("cmpl"), "model": req.model, "created": int(time.time())}
    infos, usage = [], Usage()
    try:
        async with asyncio.timeout(timeout_s):
            for index, plan in enumerate(plans):
                if req.echo:
                    yield sse(CompletionChunk(**common, choices=[
                        CompletionChoice(index=index, text=plan.query)]))
                answer = streamed_text(lambda sink, p=plan: service.run(p, sink))
                async with aclosing(answer):
                    async for item in answer:
                        if isinstance(item, str):
                            yield sse(CompletionChunk(**common, choices=[
                                CompletionChoice(index=index, text=item)]))
                            continue
                        infos.append(item.info)
                        usage = add_usage(usage, item.usage)
                        yield sse(CompletionChunk(**common, choices=[CompletionChoice(
                            index=index, text="", finish_reason=item.finish_reason)]))
    except (ApiError, StreamBroken, TimeoutError) as err:
        yield error_event(err, timeout_s)
        yield DONE
        return
    yield sse(CompletionChunk(**common, choices=[], usage=usage, conclave=infos))
    yield DONE


def plan_headers(plans: list[RoutedPrompt]) -> dict[str, str]:
    """``x-conclave-*`` headers known before a stream starts: the routing's plan."""
    return {
        "x-conclave-experts": ",".join(e for p in plans for e in dict.fromkeys(p.decision.experts)),
        "x-conclave-strategy": plans[0].decision.strategy if plans else "",
        "x-conclave-cache": ",".join(p.cache for p in plans),
        **session_headers(plans[0].session if plans else None),
    }
