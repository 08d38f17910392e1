"""API keys: per-key limits across two gateway replicas, usage against the responses, and
what the key check and counting add to a request.

    python bench/tenants.py [--seconds 20] [--rpm 60] [--concurrency 8]
                            [--overhead-requests 400] [--rounds 4] [--json FILE]

1. **Served** (local Ray + Serve, the demo pool of configs/demo.yaml, keys on, two gateway
   replicas). Two keys hammer ``/v1/route`` at once for ``--seconds`` (< 60, so the
   sliding minute never frees a slot), ``--concurrency`` callers each: ``limited`` with
   ``--rpm``, ``other`` without limits. ``limited_key_accepted``: the limited key's 200s
   (goal: within 5 % of its rpm); ``other_key_errors``: the other key's non-200s (goal 0).
   Then a third key sends panel chats (k=2, synthesis), streamed chats, completions and
   direct chats; ``usage_matches``: the tokens ``GET /v1/usage`` counted over the sum of
   the responses' ``usage`` (goal 1.0).
2. **Overhead** (in this process: the gateway's real HTTP app and service over a real
   embedded Redis, the router and experts replaced by tests/unit/gateway_fakes.py, k=2 with
   synthesis, so 3 calls are counted per request). The same chat request, one at a time,
   keys off and keys on side by side, in ``--rounds`` slices in ABBA order.
   ``auth_overhead_ms``: p50 with keys on minus p50 with keys off (goal <= 1 ms). Generation
   is left out on purpose: on the served path it varies by far more than a millisecond.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit"))  # gateway_fakes: the app without Ray
ADMIN_TOKEN = "bench-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def questions() -> list[str]:
    from experts.demo import PROFILES

    return [text for profile in PROFILES for text in profile["examples"]]


def start_served(port: int) -> str:
    """The demo app with keys on and two gateway replicas; its URL once an expert answers."""
    from cluster.config import load_config, parse_config
    from cluster.deploy.local import start_app

    data = load_config(ROOT / "configs" / "demo.yaml").model_dump(mode="json")
    data["redis"]["namespace"] = f"bench-keys-{os.getpid()}"
    data["serving"].update(num_replicas=2, admin_token=ADMIN_TOKEN)
    data["tenants"] = {"enabled": True}
    return start_app(parse_config(data), name="bench-keys", port=port, route_prefix="/keys")


def create_key(url: str, name: str, **spec) -> str:
    resp = httpx.post(url + "/v1/keys", json={"name": name, **spec}, headers=ADMIN, timeout=60)
    resp.raise_for_status()
    return resp.json()["key"]


async def hammer(url: str, keys: dict[str, str], seconds: float, concurrency: int) -> dict:
    """Every key's callers send ``/v1/route`` requests until ``seconds`` pass: statuses."""
    texts = questions()
    codes: dict[str, list[int]] = {name: [] for name in keys}
    end = time.monotonic() + seconds

    async def caller(client: httpx.AsyncClient, name: str, index: int) -> None:
        while time.monotonic() < end:
            body = {"model": "conclave",
                    "messages": [{"role": "user", "content": texts[index % len(texts)]}]}
            resp = await client.post(url + "/v1/route", json=body, headers=bearer(keys[name]))
            codes[name].append(resp.status_code)
            index += concurrency

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(caller(client, name, i) for name in keys
                               for i in range(concurrency)))
    return codes


def usage_requests() -> list[tuple[str, dict]]:
    """(path, body): panel chats, streamed chats, completions and direct chats."""
    texts = questions()
    chat = [{"model": "conclave", "max_tokens": 8,
             "messages": [{"role": "user", "content": t}]} for t in texts[:4]]
    stream = [{**c, "stream": True, "stream_options": {"include_usage": True}}
              for c in chat[:2]]
    direct = [{**c, "model": "general-base"} for c in chat[2:]]
    completions = [{"model": "conclave", "max_tokens": 8, "prompt": t} for t in texts[4:6]]
    return ([("/v1/chat/completions", b) for b in chat + stream + direct]
            + [("/v1/completions", b) for b in completions])


async def said_usage(url: str, key: str) -> tuple[int, int]:
    """(total tokens the responses reported, panel calls they named)."""
    async def one(client: httpx.AsyncClient, path: str, body: dict) -> tuple[int, int]:
        resp = await client.post(url + path, json=body, headers=bearer(key))
        resp.raise_for_status()
        if body.get("stream"):
            chunks = [json.loads(line[6:]) for line in resp.text.splitlines()
                      if line.startswith("data: {")]
            last = chunks[-1]
            return last["usage"]["total_tokens"], calls_named(last["conclave"])
        out = resp.json()
        return out["usage"]["total_tokens"], calls_named(out["conclave"])

    async with httpx.AsyncClient(timeout=120) as client:
        results = await asyncio.gather(*(one(client, p, b) for p, b in usage_requests()))
    return sum(r[0] for r in results), sum(r[1] for r in results)


def calls_named(info: dict | list) -> int:
    infos = info if isinstance(info, list) else [info]
    return sum(len(i["experts"]) + bool(i["aggregator"]) for i in infos)


def served(args) -> dict:
    import ray

    from cluster.deploy.local import wait_for_expert

    try:
        url = start_served(args.port)
        keys = {"limited": create_key(url, "limited", limits={"rpm": args.rpm}),
                "other": create_key(url, "other")}
        metered, warm = create_key(url, "metered"), create_key(url, "warm-up")
        for expert in ("general-base", "code-base"):  # engines started, not on metered's bill
            wait_for_expert(url, expert, headers=bearer(warm))
        codes = asyncio.run(hammer(url, keys, args.seconds, args.concurrency))
        said, calls = asyncio.run(said_usage(url, metered))
        counted = httpx.get(url + "/v1/usage", headers=bearer(metered), timeout=60).json()
    finally:
        if ray.is_initialized():
            ray.shutdown()
    accepted = codes["limited"].count(200)
    return {"limited_key_rpm": args.rpm, "limited_key_accepted": accepted,
            "limited_key_refused": codes["limited"].count(429),
            "limited_key_other_statuses": len(codes["limited"]) - accepted
            - codes["limited"].count(429),
            "limited_key_accepted_vs_rpm": accepted / args.rpm,
            "other_key_requests": len(codes["other"]),
            "other_key_errors": sum(c != 200 for c in codes["other"]),
            "usage_requests": len(usage_requests()), "usage_counted_requests": counted["requests"],
            "usage_said_tokens": said, "usage_counted_tokens": counted["total_tokens"],
            "usage_panel_calls": calls,
            "usage_counted_calls": sum(e["calls"] for e in counted["experts"].values()),
            "usage_matches": counted["total_tokens"] / said}


def overhead(args) -> dict:
    """p50 latency of the same chat with keys off and on, ABBA (see the module doc)."""
    import tempfile

    from gateway_fakes import AUTH, gateway_client

    from experts.redis_conn import start_embedded

    folder = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    urls = {mode: f"unix://{start_embedded(folder / f'{mode}.rdb').socket_file}"
            for mode in ("off", "on")}
    body = {"model": "conclave", "messages": [{"role": "user", "content": "hello there"}]}
    latencies: dict[str, list[float]] = {"off": [], "on": []}
    with gateway_client(urls["off"]) as (off, _, _), \
            gateway_client(urls["on"], tenants={"enabled": True}) as (on, _, _):
        key = on.post("/v1/keys", json={"name": "bench", "limits": {"rpm": 10**6}},
                      headers=AUTH).json()["key"]
        clients = {"off": (off, {}), "on": (on, bearer(key))}
        for client, headers in clients.values():  # warm up both
            for _ in range(20):
                client.post("/v1/chat/completions", json=body, headers=headers)
        per_round = args.overhead_requests // args.rounds
        for r in range(args.rounds):
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                client, headers = clients[mode]
                for _ in range(per_round):
                    started = time.perf_counter()
                    resp = client.post("/v1/chat/completions", json=body, headers=headers)
                    latencies[mode].append(time.perf_counter() - started)
                    assert resp.status_code == 200, resp.text
    p50 = {mode: statistics.median(values) * 1000 for mode, values in latencies.items()}
    return {"p50_ms_keys_off": p50["off"], "p50_ms_keys_on": p50["on"],
            "auth_overhead_ms": p50["on"] - p50["off"],
            "overhead_requests_per_mode": len(latencies["on"])}


def report(figures: dict, args) -> None:
    print(f"\nkeys bench: {args.seconds:g} s of /v1/route from 2 keys x {args.concurrency} "
          f"callers, two gateway replicas (demo pool); overhead: {args.overhead_requests} "
          f"chats per mode in-process, {args.rounds} rounds ABBA")
    rows = [("limited_key_accepted", f"{figures['limited_key_accepted']} of rpm "
             f"{figures['limited_key_rpm']} ({figures['limited_key_refused']} refused 429)"),
            ("other_key_errors", f"{figures['other_key_errors']} of "
             f"{figures['other_key_requests']}"),
            ("usage_matches", f"{figures['usage_matches']:.3f} ({figures['usage_counted_tokens']}"
             f" counted / {figures['usage_said_tokens']} in responses; "
             f"{figures['usage_counted_calls']} calls booked)"),
            ("auth_overhead_ms", f"{figures['auth_overhead_ms']:.3f} (p50 "
             f"{figures['p50_ms_keys_on']:.2f} on vs {figures['p50_ms_keys_off']:.2f} ms off)")]
    print(f"{'FIGURE':<22} VALUE")
    for name, value in rows:
        print(f"{name:<22} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rpm", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--overhead-requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    if args.seconds >= 60:
        parser.error("--seconds must stay under 60 (the rpm window)")
    from cluster.deploy.local import offline_defaults

    offline_defaults()
    figures = {**overhead(args), **served(args)}
    report(figures, args)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({**figures, "seconds": args.seconds,
                                                    "concurrency": args.concurrency,
                                                    "rounds": args.rounds}, indent=2))


if __name__ == "__main__":
    main()
