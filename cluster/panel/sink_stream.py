"""A call that reports its text through a sink, as an async iterator: the texts, in order,
as the sink receives them, then the call's result.

Used twice: in a pool replica (the sink is called from the generating thread) and in the
gateway (the streamed answer's sink is called on the event loop). The sink hands each text
to the loop with ``call_soon_threadsafe``, which is right from either, so a text given before
the call returned is queued before the end marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

DeltaSink = Callable[[str], None]  # receives each text delta of one answer, in order


@dataclass
class Finished:
    """The call's return value, after its last text."""

    result: Any


async def sink_stream(run: Callable[[DeltaSink], Awaitable[Any]]) -> AsyncIterator[str | Finished]:
    """Start ``run(sink)``; yield every text given to ``sink``, then ``Finished(result)``
    (the call's exception is raised instead). Closing the iterator early cancels the call."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def sink(text: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, text)

    task = asyncio.ensure_future(run(sink))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (text := await queue.get()) is not None:
            yield text
        yield Finished(task.result())
    finally:
        task.cancel()  # the consumer went away: stop the call (a no-op once it is done)
