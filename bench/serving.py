"""Serving throughput: the demo pool on local Ray Serve, N mixed-domain requests at
concurrency C over HTTP, Conclave's batched path against a baseline in which every request
is dispatched alone (router batch size 1, per-expert batch size 1, no batch wait).

    python bench/serving.py [--engine vllm|hf|both] [--requests 400] [--concurrency 32]
                            [--rounds 2] [--json FILE]

``--engine vllm`` or ``hf`` compares the batched path with the baseline on that engine;
``--engine both`` runs the batched path on vLLM and on transformers side by side and writes
``vllm_vs_hf_throughput``. Each engine runs at its own best demo setting: vLLM one pool
replica (it batches in its own engine process), transformers two (one GIL per replica).
``--compare tracing`` runs the batched app twice instead, tracing off and on (sampling 1.0,
every replica keeping its spans in memory), and writes ``tracing_overhead`` (requests/s
off / on; goal <= 1.05).

Both apps run side by side; the requests go in slices to one mode then the other, in ABBA
order, so a busy machine slows both alike. Prints requests/s, p50/p99 latency, errors,
model loads, mean rows per expert batch (warm-up included) and the CPU milliseconds each
request cost per deployment (gateway, router, pools, HTTP proxy) per mode; ``--json`` writes
``throughput_ratio`` (batched / baseline requests/s), ``p50_ms``, ``p99_ms`` (of the
batched path), ``errors`` (both modes) and the per-mode figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny.yaml"


def mode_config(engine: str, mode: str, namespace: str):
    """The demo config on ``engine`` for one mode: batched (as configured), baseline
    (batching off everywhere), untraced (as configured), traced (tracing on, spans kept in
    memory)."""
    from cluster.config import load_config

    config = load_config(CONFIG)
    data = config.model_dump(mode="json")
    data["redis"]["namespace"] = namespace  # a fresh pattern cache per mode
    for pool in data["pools"]:
        pool.update(engine=engine, num_replicas=1 if engine == "vllm" else 2)
    if mode == "traced":
        data["tracing"] = {"enabled": True, "exporter": "memory", "sampling_ratio": 1.0}
    if mode == "baseline":
        data["routing"].update(batch_size=1)
        for pool in data["pools"]:
            pool.update(max_batch_size=1, batch_wait_timeout_s=0.0)
    return type(config).model_validate(data)


def questions(n: int) -> list[str]:
    """``n`` mixed-domain questions: the demo experts' examples, each asked in variants."""
    from experts.demo import PROFILES

    pool = [text for profile in PROFILES for text in profile["examples"]]
    return [f"{pool[i % len(pool)]} (case {i // len(pool)})" for i in range(n)]


async def load(url: str, texts: list[str], concurrency: int, max_tokens: int) -> dict:
    """Send every text as a chat request, ``concurrency`` at a time; latencies in ms."""
    gate = asyncio.Semaphore(concurrency)
    latencies, errors = [], 0

    async def one(client: httpx.AsyncClient, text: str) -> None:
        nonlocal errors
        async with gate:
            started = time.perf_counter()
            resp = await client.post("/v1/chat/completions", json={
                "model": "conclave", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": text}]})
            latencies.append((time.perf_counter() - started) * 1000)
            errors += resp.status_code != 200

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, text) for text in texts))
        wall = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "seconds": wall}


def metric_sum(url: str, family: str, suffix: str = "_total") -> float:
    """The sum of one metric family's ``suffix`` samples (a counter's ``_total``, a
    histogram's ``_sum`` or ``_count``) on the gateway's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == family
               for s in f.samples if s.name.endswith(suffix))


def modes(args) -> dict[str, tuple[str, str]]:
    """Mode name → (engine, mode); the figure is the first's requests/s over the second's."""
    if args.engine == "both":
        return {"vllm": ("vllm", "batched"), "hf": ("hf", "batched")}
    pair = ("untraced", "traced") if args.compare == "tracing" else ("batched", "baseline")
    return {name: (args.engine, name) for name in pair}


def deploy_order(args) -> list[str]:
    """The modes in the order their apps are deployed (``--second-first`` flips it: the app
    deployed first has measured slower, so a ratio is best read from both orders)."""
    names = list(modes(args))
    return names[::-1] if args.second_first else names


def start_modes(args) -> dict[str, str]:
    """Both apps side by side (one Serve, one port, a route prefix each), warmed up."""
    from cluster.deploy.local import start_app

    urls = {}
    for name in deploy_order(args):
        engine, mode = modes(args)[name]
        config = mode_config(engine, mode, f"bench-{name}-{os.getpid()}")
        urls[name] = start_app(config, name=f"bench-{name}", port=args.port,
                               route_prefix=f"/{name}")
        asyncio.run(load(urls[name], questions(8), 4, args.max_tokens))  # load the models
    return urls


def run_rounds(urls: dict[str, str], args) -> dict:
    """The requests in ``args.rounds`` slices; each slice is sent to both modes in turn,
    the order flipping every round (ABBA), so load from other jobs drifting during the run
    weighs on both modes alike."""
    texts = questions(args.requests)
    size = -(-len(texts) // args.rounds)
    raw = {name: {"latencies": [], "errors": 0, "seconds": 0.0, "cpu": {}} for name in urls}
    for r in range(args.rounds):
        part = texts[r * size:(r + 1) * size]
        for name in list(urls) if r % 2 == 0 else list(urls)[::-1]:
            before = cpu_seconds(name)
            out = asyncio.run(load(urls[name], part, args.concurrency, args.max_tokens))
            for role, seconds in cpu_seconds(name).items():
                raw[name]["cpu"][role] = (raw[name]["cpu"].get(role, 0.0) + seconds
                                          - before.get(role, 0.0))
            for key in ("latencies", "errors", "seconds"):
                raw[name][key] += out[key]
    return {name: summarise(raw[name], urls[name]) for name in urls}


def cpu_seconds(mode: str, root_pid: int | None = None) -> dict[str, float]:
    """CPU seconds so far of the mode's Serve replicas, by deployment, and of Serve's HTTP
    proxy (shared by both modes, but only one mode has requests in flight at a time).
    With ``root_pid``, only processes descended from it (one Ray cluster's, not another
    job's proxy on the same machine)."""
    import psutil

    out: dict[str, float] = {}
    prefix = f"ray::ServeReplica:bench-{mode}:"
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        if root_pid is not None and not _has_parent(proc, lambda p: p.pid == root_pid):
            continue
        line = " ".join(proc.info["cmdline"] or [])
        # the title may name the method running: "...:pool-default.handle_request"
        role = (line[len(prefix):].split()[0].split(".")[0] if line.startswith(prefix)
                else "proxy" if line.startswith("ray::ProxyActor")
                else "vllm-engine" if line.startswith("VLLM::") and _has_parent(
                    proc, lambda p: " ".join(p.cmdline()).startswith(prefix))
                else None)
        if role and proc.info["cpu_times"]:
            times = proc.info["cpu_times"]
            out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def _has_parent(proc, matches) -> bool:
    """Whether some ancestor of ``proc`` satisfies ``matches(parent)``."""
    import psutil

    try:
        return any(matches(parent) for parent in proc.parents())
    except psutil.Error:  # gone meanwhile
        return False


def summarise(raw: dict, url: str) -> dict:
    lat = np.array(raw["latencies"])
    batches = metric_sum(url, "conclave_expert_batch_size", "_count")
    cpu_ms = {role: 1000 * sec / len(lat) for role, sec in sorted(raw["cpu"].items())}
    return {"requests": len(lat), "errors": raw["errors"], "seconds": raw["seconds"],
            "cpu_ms_per_request": cpu_ms, "cpu_ms_total": sum(cpu_ms.values()),
            "rps": len(lat) / raw["seconds"], "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "model_loads": metric_sum(url, "conclave_model_loads"),
            "mean_expert_batch": (metric_sum(url, "conclave_expert_batch_size", "_sum") / batches
                                  if batches else 0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("vllm", "hf", "both"), default="vllm")
    parser.add_argument("--compare", choices=("batching", "tracing"), default="batching",
                        help="batched vs baseline, or tracing off vs on")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2,
                        help="slices of the requests, sent to the two modes in ABBA order")
    parser.add_argument("--second-first", action="store_true",
                        help="deploy the second mode's app first (see deploy_order)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    from cluster.deploy.local import offline_defaults

    offline_defaults()
    import ray

    try:
        results = run_rounds(start_modes(args), args)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    report(results, args)


def report(results: dict, args) -> None:
    print(f"\n{args.requests} mixed-domain requests per mode, concurrency {args.concurrency}, "
          f"max_tokens {args.max_tokens}, {args.rounds} rounds ABBA (tiny pool, configs/tiny.yaml)")
    print(f"{'MODE':<10} {'REQ/S':>8} {'P50 MS':>9} {'P99 MS':>9} {'ERRORS':>7} {'LOADS':>6} "
          f"{'ROWS/BATCH':>11}")
    for name, r in results.items():
        print(f"{name:<10} {r['rps']:>8.2f} {r['p50_ms']:>9.0f} {r['p99_ms']:>9.0f} "
              f"{r['errors']:>7} {r['model_loads']:>6.0f} {r['mean_expert_batch']:>11.1f}")
    print("CPU ms per request (Serve replicas and the HTTP proxy):")
    for name, r in results.items():
        parts = ", ".join(f"{role} {ms:.1f}" for role, ms in r["cpu_ms_per_request"].items())
        print(f"  {name:<10} {r['cpu_ms_total']:6.1f}  ({parts})")
    first, second = modes(args)
    ratio = results[first]["rps"] / results[second]["rps"]
    key = ("vllm_vs_hf_throughput" if args.engine == "both" else "tracing_overhead"
           if args.compare == "tracing" else "throughput_ratio")
    print(f"{key} ({first} / {second}): {ratio:.2f}x")
    if args.json_path:
        lead = results[first]
        Path(args.json_path).write_text(json.dumps({
            key: ratio, "engine": args.engine, "p50_ms": lead["p50_ms"], "p99_ms": lead["p99_ms"],
            "errors": sum(r["errors"] for r in results.values()), "modes": results,
            "requests": args.requests, "concurrency": args.concurrency,
            "rounds": args.rounds, "deployed_first": deploy_order(args)[0]}, indent=2))


if __name__ == "__main__":
    main()
