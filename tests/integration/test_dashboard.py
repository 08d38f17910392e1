"""The Grafana dashboard (deploy/grafana/dashboards/conclave.json) against the metrics a
running app exports: every PromQL expression parses into metric and label names, and
each metric it names is in ``/metrics`` with the labels it groups or filters by, so no
panel is dead."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.ray

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/conclave.json"
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless"}
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                              "_created"),
             "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression refers to."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, $__rate_interval included
    for body in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= set(re.findall(r"[a-zA-Z_]\w*", body))
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    tokens = re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", expr)
    names = {m.group(1) for m in tokens if not m.group(2)} - _KEYWORDS
    return names, labels


def test_promql_names_finds_metrics_and_labels():
    expr = ('histogram_quantile(0.95, sum by (le, expert) (rate(conclave_x_bucket{pool="a,b"}'
            '[$__rate_interval]))) / sum(rate(conclave_y_total[5m]))')
    assert promql_names(expr) == ({"conclave_x_bucket", "conclave_y_total"},
                                  {"le", "expert", "pool"})


def exported(text: str) -> dict[str, set[str] | None]:
    """Sample name → its label names, for every family in a /metrics page; a family with
    no samples yet (a counter nothing incremented) is there by its type's sample names,
    its labels unknown (None)."""
    out: dict[str, set[str] | None] = {}
    for family in text_string_to_metric_families(text):
        for suffix in _SUFFIXES.get(family.type, ("",)):
            out[family.name + suffix] = None
        for sample in family.samples:
            out[sample.name] = (out[sample.name] or set()) | set(sample.labels)
    return out


def test_every_dashboard_query_names_exported_metrics(conclave_server):
    with httpx.Client(base_url=conclave_server.url, timeout=120) as http:
        body = {"model": "conclave", "max_tokens": 4,
                "messages": [{"role": "user", "content": "what is the derivative of x"}]}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        streamed = http.post("/v1/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 200
        metrics = exported(http.get("/metrics").text)
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names, labels = promql_names(target["expr"])
            assert names, f"{panel['title']!r}: no metric in {target['expr']!r}"
            for name in names:
                assert name in metrics, f"{panel['title']!r}: {name} is not exported"
            seen = [metrics[name] for name in names if metrics[name] is not None]
            if seen:  # label names show only on samples
                known = set().union(*seen)
                assert labels <= known, f"{panel['title']!r}: unknown labels {labels - known}"
    # the request above created the labelled series the time panels plot
    for name in ("conclave_time_to_first_token_seconds_bucket",
                 "conclave_time_per_output_token_seconds_bucket",
                 "conclave_generated_tokens_total", "conclave_decisions_total"):
        assert "expert" in metrics[name], name
