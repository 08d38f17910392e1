"""Mixed HTTP load against a local Conclave gateway, with faults fired on a schedule: the
engine under tests/reliability and ``bench/soak.py`` (test tooling: not part of the
installed packages).

Request kinds rotate: routed chat, routed chat streamed (SSE), routed completion, and one
expert asked directly. Every request is recorded as an :class:`RequestRecord` (status, latency,
who answered, failovers, when it was sent), so a caller can check what happened around a
fault: e.g. that no request sent after an expert's removal was acknowledged reached it.

Load only goes to a loopback address: this is a test tool, not a load tester for others.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

KINDS = ("chat", "chat-stream", "completion", "direct")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class RequestRecord:
    """One request and what came back."""

    index: int
    kind: str
    sent_at: float  # time.monotonic() just before sending
    latency_s: float = 0.0
    status: int = 0  # 0: no HTTP response at all
    experts: list[str] = field(default_factory=list)  # who answered, aggregator included
    failed: list[str] = field(default_factory=list)  # experts failed over from
    cache: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


@dataclass
class Fault:
    """``action()`` (blocking; run in a thread while the load goes on) once at least
    ``after_requests`` requests were sent and ``after_s`` seconds passed."""

    name: str
    action: Callable[[], object]
    after_requests: int = 0
    after_s: float = 0.0


@dataclass
class FaultRecord:
    name: str
    started: float  # monotonic
    done: float = 0.0  # monotonic, when the action returned (the fault is acknowledged)
    result: object = None
    error: str = ""


@dataclass
class LoadReport:
    outcomes: list[RequestRecord]
    faults: list[FaultRecord]
    wall_s: float

    def summary(self) -> dict:
        """The figures: counts, failovers and latency percentiles (of answered requests)."""
        answered = sorted(o.latency_s for o in self.outcomes if o.status)
        return {
            "requests": len(self.outcomes),
            "successes": sum(o.ok for o in self.outcomes),
            "lost": sum(not o.ok for o in self.outcomes),
            "errors_5xx": sum(o.status >= 500 for o in self.outcomes),
            "errors_4xx": sum(400 <= o.status < 500 for o in self.outcomes),
            "no_response": sum(o.status == 0 for o in self.outcomes),
            "failovers": sum(len(o.failed) for o in self.outcomes),
            "p50_ms": round(percentile(answered, 50) * 1000, 1),
            "p99_ms": round(percentile(answered, 99) * 1000, 1),
            "requests_per_s": round(len(self.outcomes) / self.wall_s, 2) if self.wall_s else 0.0,
            "faults": [f"{f.name}{' (failed: ' + f.error + ')' if f.error else ''}"
                       for f in self.faults],
        }

    def table(self) -> str:
        """The summary as an aligned two-column table."""
        rows = [(key, value) for key, value in self.summary().items() if key != "faults"]
        rows.append(("faults", len(self.faults)))
        width = max(len(key) for key, _ in rows)
        lines = [f"{key:<{width}}  {value}" for key, value in rows]
        lines += [f"  {record.name} at {record.started:.1f}s" for record in self._relative()]
        return "\n".join(lines)

    def _relative(self) -> list[FaultRecord]:
        start = min((o.sent_at for o in self.outcomes), default=0.0)
        return [FaultRecord(f.name, f.started - start) for f in self.faults]


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil
    return float(sorted_values[int(rank) - 1])


class MixedLoad:
    """Sends mixed requests to ``base_url`` with ``concurrency`` clients.

    ``questions`` are cycled; ``direct`` names experts that may be asked directly (never
    ones a fault removes); ``max_tokens`` keeps generations short."""

    def __init__(self, base_url: str, questions: Sequence[str], *,
                 direct: Sequence[str] = (), concurrency: int = 8, max_tokens: int = 8,
                 timeout_s: float = 120.0):
        host = urlparse(base_url).hostname
        if host not in _LOOPBACK:
            raise ValueError(f"load goes to a loopback address only, not {host!r}")
        if not questions:
            raise ValueError("give at least one question")
        self.base_url = base_url.rstrip("/")
        self.questions = list(questions)
        self.direct = list(direct)
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s

    async def run(self, requests: int | None = None, duration_s: float | None = None,
                  faults: Sequence[Fault] = (), until_faults_done: bool = False) -> LoadReport:
        """Send ``requests`` requests, or keep sending for ``duration_s`` seconds (the
        first bound reached ends it); fire ``faults`` on their schedule. With
        ``until_faults_done``, the load also ends once every fault's action returned."""
        if requests is None and duration_s is None:
            raise ValueError("bound the load: give requests or duration_s")
        progress = _Progress(requests, duration_s)
        outcomes: list[RequestRecord] = []
        records: list[FaultRecord] = []
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            firing = [asyncio.create_task(_fire(f, progress, records)) for f in faults]
            if until_faults_done and firing:
                progress.stop = lambda: all(task.done() for task in firing)
            await asyncio.gather(*(self._worker(client, progress, outcomes)
                                   for _ in range(self.concurrency)))
            progress.finished = True
            await asyncio.gather(*firing)  # faults already firing finish; the rest never fire
        return LoadReport(sorted(outcomes, key=lambda o: o.index), records,
                          time.monotonic() - progress.started)

    async def _worker(self, client: httpx.AsyncClient, progress: _Progress,
                      outcomes: list[RequestRecord]) -> None:
        while (index := progress.next_index()) is not None:
            outcomes.append(await self.send(client, index))

    def request_for(self, index: int) -> tuple[str, str, dict]:
        """(kind, path, JSON body) of request number ``index``."""
        kinds = KINDS if self.direct else KINDS[:-1]
        kind = kinds[index % len(kinds)]
        question = self.questions[index % len(self.questions)]
        if kind == "completion":
            return kind, "/v1/completions", {"model": "conclave", "prompt": question,
                                             "max_tokens": self.max_tokens}
        model = self.direct[index % len(self.direct)] if kind == "direct" else "conclave"
        body = {"model": model, "messages": [{"role": "user", "content": question}],
                "max_tokens": self.max_tokens, "stream": kind == "chat-stream"}
        return kind, "/v1/chat/completions", body

    async def send(self, client: httpx.AsyncClient, index: int) -> RequestRecord:
        kind, path, body = self.request_for(index)
        outcome = RequestRecord(index, kind, time.monotonic())
        try:
            async with client.stream("POST", self.base_url + path, json=body) as resp:
                outcome.status = resp.status_code
                text = (await resp.aread()).decode()
            if outcome.status == 200:
                _read_info(outcome, text, streamed=kind == "chat-stream")
            else:
                outcome.error = text[:300]
        except (httpx.HTTPError, ValueError) as err:
            outcome.error = outcome.error or f"{type(err).__name__}: {err}"[:300]
        outcome.latency_s = time.monotonic() - outcome.sent_at
        return outcome


class _Progress:
    """How far a run is: requests issued, and whether its bound was reached."""

    def __init__(self, requests: int | None, duration_s: float | None):
        self.requests = requests
        self.duration_s = duration_s
        self.started = time.monotonic()
        self.issued = 0
        self.finished = False
        self.stop: Callable[[], bool] = lambda: False  # ends the load early when true

    def next_index(self) -> int | None:
        """The next request's number, or None once the bound is reached."""
        late = self.duration_s is not None and time.monotonic() - self.started >= self.duration_s
        if late or self.stop() or (self.requests is not None and self.issued >= self.requests):
            return None
        self.issued += 1
        return self.issued - 1

    def due(self, fault: Fault) -> bool:
        return (self.issued >= fault.after_requests
                and time.monotonic() - self.started >= fault.after_s)


async def _fire(fault: Fault, progress: _Progress, records: list[FaultRecord]) -> None:
    while not progress.due(fault):
        if progress.finished:
            return  # the load ended first: this fault never fires
        await asyncio.sleep(0.05)
    record = FaultRecord(fault.name, time.monotonic())
    records.append(record)
    try:
        record.result = await asyncio.to_thread(fault.action)
    except Exception as err:  # a failed fault is reported, not raised mid-load
        record.error = f"{type(err).__name__}: {err}"
    record.done = time.monotonic()


def _read_info(outcome: RequestRecord, text: str, streamed: bool) -> None:
    """Fill who answered from the ``conclave`` field (of the last SSE chunk if streamed)."""
    if streamed:
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            raise ValueError("the event stream ended without [DONE]")
        info = next((json.loads(e).get("conclave") for e in reversed(events[:-1])
                     if '"conclave"' in e), None)
    else:
        info = json.loads(text).get("conclave")
    for part in info if isinstance(info, list) else [info] if info else []:
        outcome.experts += [use["id"] for use in part.get("experts", [])]
        if part.get("aggregator"):
            outcome.experts.append(part["aggregator"])
        outcome.failed += [f["expert"] for f in part.get("failovers", [])]
        outcome.cache.append(part.get("cache", ""))
