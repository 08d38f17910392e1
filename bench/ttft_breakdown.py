"""Where the time to first token goes, one request at a time: Conclave on the real model's
base-only pool (``bench/vs_vllm_servers.py: conclave_config``), tracing to a file, streamed
chats sent one after another; each request's path split by its spans (cluster/ops/tracing.py)
against the client's clock (one machine, one clock).

    python bench/ttft_breakdown.py [--requests 24] [--model base|conclave:k=1] [--json FILE]

Segments (p50 and mean over the requests, after 2 warm-up requests): ``proxy_in`` (the client
to the gateway's HTTP span: Serve's proxy and its hop), ``gateway_before_expert`` (the HTTP
span's start to the expert call: parsing, admission, routing when routed), ``route`` (the
gateway's route span: the router hop, the router's work, the hop back), ``hop_to_pool`` (the
expert call to the pool's span), ``engine_and_back`` (the pool's start to the gateway's first
delta: the engine's first token and the way back), ``proxy_out`` (the gateway's first delta
to the client's first content chunk), ``total`` (the client's TTFT). ``--json`` writes them
as ``segments_ms`` (p50) with ``model``, ``requests`` and ``load_average_1m``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from vs_vllm import engine_environment
from vs_vllm_models import build_real_bundle
from vs_vllm_servers import BASE_NAME, conclave

WARMUP = 2


def span_ns(stamp: str) -> int:
    """An exported span's ISO time as nanoseconds since the epoch."""
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1e9)


def ask(client, url: str, model: str, text: str, request_id: str) -> tuple[int, int | None]:
    """One streamed chat: (sent, first content chunk) in ``time.time_ns``."""
    body = {"model": model, "stream": True, "max_tokens": 16,
            "messages": [{"role": "user", "content": text}]}
    sent, first = time.time_ns(), None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                       headers={"x-request-id": request_id}) as reply:
        for line in reply.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.time_ns()
    return sent, first


def run(model: str, requests: int, spans: Path) -> list[tuple[str, int, int]]:
    """Start Conclave with file tracing, send the requests one at a time, stop it."""
    import httpx

    bundle = build_real_bundle(requests + WARMUP)
    tracing = {"enabled": True, "exporter": "file", "file": str(spans)}
    with conclave(bundle, 8, lora=False, sections={"tracing": tracing}) as url, \
            httpx.Client(timeout=120) as client:
        times = [(f"ttft-{i}", *ask(client, url, model, text, f"ttft-{i}"))
                 for i, (text, _) in enumerate(bundle.requests[:requests + WARMUP])]
        time.sleep(3)  # the replicas' span exporters flush
    return [row for row in times[WARMUP:] if row[2] is not None]


def segments(spans: list[dict], request_id: str, sent: int, first: int) -> dict[str, float]:
    """One request's segments in ms."""
    http = next(s for s in spans if s["name"].startswith("POST")
                and s["attributes"].get("conclave.request_id") == request_id)
    trace = {s["name"]: s for s in spans
             if s["context"]["trace_id"] == http["context"]["trace_id"]}
    start = {name: span_ns(s["start_time"]) for name, s in trace.items()}
    expert = trace["expert"]
    gateway_first = start["expert"] + expert["attributes"]["conclave.time_to_first_token_s"] * 1e9
    ms = {"proxy_in": start[http["name"]] - sent,
          "gateway_before_expert": start["expert"] - start[http["name"]],
          "hop_to_pool": start["pool.generate"] - start["expert"],
          "engine_and_back": gateway_first - start["pool.generate"],
          "proxy_out": first - gateway_first, "total": first - sent}
    if "route" in trace:
        ms["route"] = span_ns(trace["route"]["end_time"]) - start["route"]
    return {key: value / 1e6 for key, value in ms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--model", default=BASE_NAME, help="base (direct) or conclave:k=1")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    engine_environment(1)
    spans_file = Path(tempfile.mkdtemp(prefix="ttft-")) / "spans.jsonl"
    times = run(args.model, args.requests, spans_file)
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    rows = [segments(spans, *row) for row in times]
    p50 = {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]}
    print(f"{args.model}: {len(rows)} requests one at a time, load {os.getloadavg()[0]:.1f}")
    for key, value in p50.items():
        mean = statistics.mean(r[key] for r in rows)
        print(f"  {key:<22} p50 {value:7.1f} ms   mean {mean:7.1f} ms")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"model": args.model, "requests": len(rows), "segments_ms": p50,
             "load_average_1m": round(os.getloadavg()[0], 2)}, indent=2))


if __name__ == "__main__":
    main()
