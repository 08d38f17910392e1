"""sink_stream: a sink-reporting call as an async iterator; with ``coalesce``, texts that
queued while the consumer was busy come out joined."""

from __future__ import annotations

import asyncio

from cluster.sink_stream import Finished, sink_stream


async def _collect(coalesce: bool) -> list:
    async def run(sink):
        for word in ("a", "b", "c"):  # all given before the consumer looks
            sink(word)
        await asyncio.sleep(0)
        return "done"

    return [item async for item in sink_stream(run, coalesce=coalesce)]


def test_texts_come_one_by_one_or_joined_when_coalesced():
    plain = asyncio.run(_collect(False))
    joined = asyncio.run(_collect(True))
    assert plain[:-1] == ["a", "b", "c"] and joined[:-1] == ["abc"]
    assert plain[-1] == joined[-1] == Finished("done")
