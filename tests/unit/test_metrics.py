"""Time to first token and per output token, as the gateway books them."""

from __future__ import annotations

import pytest

from cluster.ops.metrics import ConclaveMetrics


def observed(metrics: ConclaveMetrics, name: str, expert: str) -> tuple[float, float]:
    """(count, sum) of one expert's histogram."""
    samples = {s.name: s.value for family in metrics.registry.collect() if family.name == name
               for s in family.samples if s.labels.get("expert") == expert}
    return samples.get(name + "_count", 0.0), samples.get(name + "_sum", 0.0)


def test_streamed_call_books_first_token_and_the_rest_per_token():
    metrics = ConclaveMetrics()
    metrics.record_timing("math", seconds=1.0, tokens=5, first_token_s=0.2)
    assert observed(metrics, "conclave_time_to_first_token_seconds", "math") == (1, 0.2)
    count, total = observed(metrics, "conclave_time_per_output_token_seconds", "math")
    assert count == 1 and total == pytest.approx(0.2)  # 0.8 s over the 4 tokens after the first


def test_whole_reply_brings_its_first_token_with_its_last():
    metrics = ConclaveMetrics()
    metrics.record_timing("code", seconds=0.6, tokens=3)
    assert observed(metrics, "conclave_time_to_first_token_seconds", "code") == (1, 0.6)
    count, total = observed(metrics, "conclave_time_per_output_token_seconds", "code")
    assert count == 1 and total == pytest.approx(0.2)


def test_no_tokens_books_nothing_and_one_token_has_no_per_token_time():
    metrics = ConclaveMetrics()
    metrics.record_timing("law", seconds=0.5, tokens=0)
    assert observed(metrics, "conclave_time_to_first_token_seconds", "law") == (0, 0)
    metrics.record_timing("law", seconds=0.5, tokens=1, first_token_s=0.5)
    assert observed(metrics, "conclave_time_to_first_token_seconds", "law") == (1, 0.5)
    assert observed(metrics, "conclave_time_per_output_token_seconds", "law") == (0, 0)
