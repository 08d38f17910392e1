"""Expert requests on one loaded engine: the plain logic under the pool deployment (no Ray
here, so it is unit-testable). :func:`run_batch` runs one batch on a batch engine (HF,
replay); :func:`run_continuous` hands rows to an engine that batches by itself (vLLM).

All rows share one engine (a base model and its LoRA adapters); each row names its
expert, whose adapter (or ``None`` for the base) is passed per row, so a mixed-adapter
batch runs as one ``generate`` per distinct set of sampling parameters (and per band of
prompt lengths, see :func:`length_chunks`). Rows of a
``mixture`` expert also pass GLIDER's global query embedding ``q``: the embedding of the
row's query text (its last user message), from ``embed``.

A row with a ``sink`` gets its text delta by delta while its chunk generates: the chunk
then runs through ``engine.generate_streaming``, still as one batch with the other rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cluster.ops.tracing import bound_request_id
from cluster.serve.messages import ExpertReply, ExpertRequest
from experts.engine import GenerationEngine, GenerationParams, TextSink
from experts.errors import ExpertError
from experts.spec import ExpertSpec

log = logging.getLogger(__name__)

LENGTH_RATIO = 3.0


@dataclass
class Row:
    """One request being generated in this pool replica, with where its text goes as it
    is generated (streaming only: a sink never crosses a process)."""

    request: ExpertRequest
    sink: Callable[[str], None] | None = None  # gets each delta of this row's text

    @property
    def request_id(self) -> str | None:
        """The x-request-id of the HTTP request this row serves (for its log lines)."""
        return self.request.trace.request_id if self.request.trace else None


def _group_key(params: GenerationParams) -> tuple:
    return (params.max_tokens, params.temperature, params.top_p, tuple(params.stop),
            params.seed)


def run_batch(
    engine: GenerationEngine,
    rows: list[Row],
    spec_of: Callable[[str], ExpertSpec],
    prepare: Callable[[GenerationEngine, ExpertSpec], None],
    adapter_of: Callable[[ExpertSpec], str | None],
    embed: Callable[[list[str]], object] | None = None,
) -> list[ExpertReply]:
    """Generate for every row; a row whose expert cannot run gets a failed reply (the
    caller fails it over) while the other rows still generate."""
    results: list[ExpertReply | None] = [None] * len(rows)
    groups: dict[tuple, list[tuple[int, str | None, GenerationParams]]] = {}
    for i, row in enumerate(rows):
        try:
            spec = spec_of(row.request.expert)
            prepare(engine, spec)
            params = row.request.params.over(spec.generation)
            engine.check_features(params)
            key = (*_group_key(params), spec.kind == "mixture")
            groups.setdefault(key, []).append((i, adapter_of(spec), params))
        except Exception as err:  # one bad expert must not sink its batch-mates
            results[i] = ExpertReply.failed(row.request.expert, err)
    for key, members in groups.items():
        for chunk in length_chunks(members, [prompt_chars(rows[i].request.prompt) for i, _, _ in members]):
            _generate(engine, rows, chunk, key[-1] and embed, results)
    return results


async def run_continuous(
    engine: GenerationEngine,
    rows: list[Row],
    spec_of: Callable[[str], ExpertSpec],
    prepare: Callable[[GenerationEngine, ExpertSpec], str | None],
) -> list[ExpertReply]:
    """Rows for an engine that batches by itself (vLLM): each its own request, all sent at
    once, so they join its running batch. Rows caught by the death of the engine's process
    are retried once, on the engine restarted in place: a crash loses no request. A
    streamed row whose text had started to go out is failed instead (the retry would send
    its text again from the start); the gateway fails it over and the stream says so."""
    streamed: set[int] = set()  # rows whose sink has had text
    replies = await _continuous_rows(engine, rows, range(len(rows)), spec_of, prepare,
                                     streamed)
    if engine.errored:
        log.error("the engine process of %s died; restarting it (requests %s)",
                  engine.model_name, ", ".join(sorted({r.request_id or "-" for r in rows})))
        await asyncio.to_thread(engine.restart)
        failed = [i for i, reply in enumerate(replies) if isinstance(reply, Exception)]
        for i in streamed.intersection(failed):
            replies[i] = ExpertError("the engine process died while this answer streamed")
        retried = [i for i in failed if i not in streamed]
        again = await _continuous_rows(engine, rows, retried, spec_of, prepare, streamed)
        for i, reply in zip(retried, again, strict=True):
            replies[i] = reply
    return [ExpertReply.failed(row.request.expert, r) if isinstance(r, Exception) else r
            for row, r in zip(rows, replies, strict=True)]


async def _continuous_rows(engine, rows: list[Row], index, spec_of, prepare,
                           streamed: set[int]) -> list:
    """Rows ``index`` sent to the engine in one hand-over: each its reply, or the exception
    that stopped it (its expert could not run, or its generation failed)."""
    results: dict[int, object] = {}
    requests: dict[int, tuple] = {}
    for i in index:
        row = rows[i]
        with bound_request_id(row.request_id):  # its log lines name the row's request
            try:
                spec = spec_of(row.request.expert)
                adapter = prepare(engine, spec)
            except Exception as err:  # one bad expert must not sink its call-mates
                results[i] = err
                continue
        sink = None if row.sink is None else _noting(row.sink, streamed, i)
        requests[i] = (row.request.prompt, row.request.params.over(spec.generation), adapter,
                       sink)
    outputs = await engine.agenerate_many(list(requests.values())) if requests else []
    for i, out in zip(requests, outputs, strict=True):
        results[i] = out if isinstance(out, BaseException) else ExpertReply.of(out)
    return [results[i] for i in index]


def _noting(sink: Callable[[str], None], streamed: set[int], row: int) -> Callable[[str], None]:
    def noted(delta: str) -> None:
        streamed.add(row)
        sink(delta)

    return noted


def _generate(engine, rows: list[Row], members: list, embed, results: list) -> None:
    index = [i for i, _, _ in members]
    prompts = [rows[i].request.prompt for i in index]
    extra = {}
    if embed:  # a mixture's rows: GLIDER's global q per row
        extra["embeddings"] = embed([query_text(prompt) for prompt in prompts])
    adapters = [adapter for _, adapter, _ in members]
    sinks = [rows[i].sink for i in index]
    if any(sinks):
        on_text = _fan_out(sinks, [rows[i].request_id for i in index])
        outputs = engine.generate_streaming(
            prompts, members[0][2], adapters=adapters, on_text=on_text, **extra
        )
    else:
        outputs = engine.generate(prompts, members[0][2], adapters=adapters, **extra)
    for i, out in zip(index, outputs, strict=True):
        results[i] = ExpertReply.of(out)


def _fan_out(sinks: list[Callable[[str], None] | None], ids: list[str | None]) -> TextSink:
    """The chunk's one engine sink: row j's deltas go to row j's own sink, if it has one.

    A sink that raises (its client went away) is dropped rather than let through: the
    exception would abort the generate call, and with it every batch-mate's answer. Its
    log line names the row's request (``ids[j]``)."""

    def on_text(row: int, delta: str) -> None:
        sink = sinks[row]
        if sink is None:
            return
        try:
            sink(delta)
        except Exception:
            with bound_request_id(ids[row]):
                log.warning("dropping the text sink of row %d", row, exc_info=True)
            sinks[row] = None

    return on_text


def length_chunks(items: list, lengths: list[int], ratio: float = LENGTH_RATIO) -> list[list]:
    """``items`` sorted by length and cut where a prompt is over ``ratio`` times the
    shortest of its chunk: rows are left-padded to the longest of their batch, so one
    long prompt (a synthesis over other answers) would make every short row pay for it."""
    order = sorted(range(len(items)), key=lengths.__getitem__)
    chunks: list[list] = []
    start = None
    for i in order:
        if start is None or lengths[i] > ratio * max(start, 1):
            chunks.append([])
            start = lengths[i]
        chunks[-1].append(items[i])
    return chunks


def prompt_chars(prompt: object) -> int:
    """Characters of a prompt (a plain string or chat messages): its length, roughly."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(str(m.get("content", ""))) for m in prompt)


def query_text(prompt: object) -> str:
    """The text a prompt asks about: itself, or a chat's last user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return str(users[-1]) if users else ""
