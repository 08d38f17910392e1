"""The load ``bench/vs_vllm.py`` sends: chat requests streamed through the stock ``openai``
async client, ``concurrency`` at a time, each timed to its first content token (TTFT) and
to its last; and the figures per system (req/s, tokens/s, TTFT and latency p50/p99)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


def pct(values: list[float], q: float) -> float:
    """The ``q``th percentile of ``values`` (seconds), in ms; nan when there are none."""
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


@dataclass
class Sample:
    """What one pass of requests gave: per-request times (s), tokens, failures."""

    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    seconds: float = 0.0  # wall time of the passes
    error_texts: list[str] = field(default_factory=list)

    def add(self, other: Sample) -> None:
        self.ttft += other.ttft
        self.latency += other.latency
        self.tokens += other.tokens
        self.errors += other.errors
        self.seconds += other.seconds
        self.error_texts += other.error_texts[:3]

    def summary(self) -> dict:
        done = len(self.latency)
        return {"requests": done + self.errors, "errors": self.errors,
                "seconds": self.seconds, "rps": done / self.seconds if self.seconds else 0.0,
                "tokens": self.tokens,
                "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
                "ttft_p50_ms": pct(self.ttft, 50), "ttft_p99_ms": pct(self.ttft, 99),
                "latency_p50_ms": pct(self.latency, 50), "latency_p99_ms": pct(self.latency, 99),
                "error_examples": self.error_texts[:3]}


async def _one(client, model: str, text: str, max_tokens: int, out: Sample,
               count: Callable[[str], int]) -> None:
    started = time.perf_counter()
    first, pieces = None, []
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
            temperature=0.0, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                first = first or time.perf_counter()
    except Exception as err:  # noqa: BLE001 -- any failure is one error of the system
        out.errors += 1
        out.error_texts.append(f"{type(err).__name__}: {err}"[:300])
        return
    end = time.perf_counter()
    out.ttft.append((first or end) - started)
    out.latency.append(end - started)
    # Conclave's stream has no usage chunk and a delta need not be one token: count every
    # system's tokens the same way, by tokenizing what it streamed.
    out.tokens += count("".join(pieces))


async def _run(url: str, jobs: Sequence[tuple[str, str]], concurrency: int,
               max_tokens: int, count: Callable[[str], int]) -> Sample:
    from openai import AsyncOpenAI

    out = Sample()
    gate = asyncio.Semaphore(concurrency)
    client = AsyncOpenAI(base_url=url + "/v1", api_key="none", timeout=600, max_retries=0)

    async def gated(model: str, text: str) -> None:
        async with gate:
            await _one(client, model, text, max_tokens, out, count)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(gated(model, text) for text, model in jobs))
        out.seconds = time.perf_counter() - started
    finally:
        await client.close()
    return out


def send(url: str, jobs: Sequence[tuple[str, str]], concurrency: int, max_tokens: int,
         count: Callable[[str], int]) -> Sample:
    """Send ``jobs`` (prompt, model) to the OpenAI server at ``url``; blocking.
    ``count(text)``: the tokens in a streamed answer."""
    return asyncio.run(_run(url, jobs, concurrency, max_tokens, count))


def models_for(jobs: Sequence[tuple[str, str]], model: Callable[[str], str]):
    """``jobs`` with each adapter name mapped to the model string a system wants."""
    return [(text, model(adapter)) for text, adapter in jobs]
