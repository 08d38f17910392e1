"""bench/ttft_breakdown.py splits a request's time to first token by its spans: checked on
spans made by hand (the bench itself needs Ray and the real model)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.bench_scripts import load_bench

MS = 1_000_000


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # its sibling imports
    try:
        yield load_bench("ttft_breakdown")
    finally:
        sys.path.pop(0)


def _span(name: str, trace: str, start_ms: float, end_ms: float, **attributes) -> dict:
    def stamp(ms: float) -> str:
        moment = datetime.fromtimestamp(1_800_000_000 + ms / 1000, tz=UTC)
        return moment.isoformat().replace("+00:00", "Z")

    return {"name": name, "context": {"trace_id": trace}, "attributes": attributes,
            "start_time": stamp(start_ms), "end_time": stamp(end_ms)}


def test_a_routed_request_is_split_into_its_hops(bench):
    sent = 1_800_000_000_000 * MS  # the client's clock, in ns
    spans = [_span("POST /v1/chat/completions", "t1", 5, 90, **{"conclave.request_id": "r1"}),
             _span("route", "t1", 8, 15), _span("expert", "t1", 18, 88,
                                                 **{"conclave.time_to_first_token_s": 0.040}),
             _span("pool.generate", "t1", 21, 85),
             _span("POST /v1/chat/completions", "t2", 0, 1, **{"conclave.request_id": "r2"})]
    got = bench.segments(spans, "r1", sent, sent + 60 * MS)
    assert got == pytest.approx({"proxy_in": 5, "gateway_before_expert": 13, "route": 7,
                                 "hop_to_pool": 3, "engine_and_back": 37, "proxy_out": 2,
                                 "total": 60}, abs=0.01)
