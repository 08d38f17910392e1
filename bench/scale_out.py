"""Scale-out: the same workload on a real multi-node Ray cluster with 1, 2 and 3 worker
nodes on this machine, each worker given its share of the machine's CPUs.

    python bench/scale_out.py [--workers 1,2,3] [--rounds 2] [--requests 300]
                              [--concurrency 16] [--max-tokens 8] [--json FILE]

Per worker count: a fresh cluster (:mod:`cluster.local_cluster`: a head with the gateway,
router and HTTP proxy, plus N workers of ``cpu_count / N`` logical CPUs and one
``expert-node``), a TCP Redis, the demo pool with one replica per worker (each reserving its
node's CPU share, so one torch thread per reserved core; a Ray node's own CPU count is
that share rounded up, as Ray counts whole CPUs), a warm-up, then ``--requests`` mixed
requests (chat, streamed chat, completion, one expert asked directly) at ``--concurrency``.
Each worker count runs once per round, the order reversed every round (1,2,3,3,2,1), so
load from other jobs drifting during the run weighs on every count alike. Prints the
rounds' mean requests/s, latency, losses, the speed-up over one worker and the scaling
efficiency (speed-up / workers), the rows each worker's replica generated, and the CPU
milliseconds a request cost on the head (gateway, router, proxy) and in the pools: the
workers share the machine's cores with the head, so the head's share bounds what more
workers can add.
``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from serving import cpu_seconds  # bench/serving.py: CPU seconds of an app's processes

APP = "bench-scale"  # cpu_seconds("scale") reads this app's replicas
POOL = "pool-default"


def app_args(redis_url: str, workers: int, cpus_per_worker: float) -> dict:
    return {
        "demo_pool": True,
        "redis": {"url": redis_url, "namespace": f"scale-{workers}-{os.getpid()}"},
        "routing": {"k": 2, "resources": {"frontend": 1}},
        "pools": [{"name": "default", "num_replicas": workers, "num_cpus": cpus_per_worker,
                   "resources": {"expert-node": 1}, "max_resident_models": 3,
                   "max_batch_size": 32, "batch_wait_timeout_s": 0.01}],
        "serving": {"resources": {"frontend": 1}, "max_tokens_limit": 64,
                    "request_timeout_s": 300, "expert_timeout_s": 120},
    }


def questions() -> list[str]:
    from experts.demo import PROFILES

    return [text for profile in PROFILES for text in profile["examples"]]


def measure(workers: int, args) -> dict:
    """One fresh cluster with ``workers`` worker nodes: warm up, then the timed load."""
    # The cluster harness and the load generator are test tooling (tests/).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from loadgen import MixedLoad
    from local_cluster import LocalCluster, NodeSpec, TcpRedis, free_port
    from ray import serve

    from cluster.serve.app import build_app

    share = round(os.cpu_count() / workers, 3)  # what each worker's replica reserves
    node_cpus = math.ceil(share)  # a Ray node's CPU count must be whole
    redis = TcpRedis(tempfile.mkdtemp(prefix="cscale-")).start()
    cluster = LocalCluster(NodeSpec("head", num_cpus=1, resources={"frontend": 10})).start()
    try:
        for i in range(workers):
            cluster.add(NodeSpec(f"w{i}", num_cpus=node_cpus, resources={"expert-node": 1}))
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args(redis.url, workers, share)), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        load = MixedLoad(url, questions(), direct=["math", "code-base"],
                         concurrency=args.concurrency, max_tokens=args.max_tokens)
        asyncio.run(load.run(requests=args.concurrency * 2))  # every replica warm
        before, rows_before = cpu_seconds("scale", os.getpid()), rows_by_node(cluster)
        report = asyncio.run(load.run(requests=args.requests))
        cpu = {role: sec - before.get(role, 0.0)
               for role, sec in cpu_seconds("scale", os.getpid()).items()}
        rows = {node: n - rows_before.get(node, 0) for node, n in rows_by_node(cluster).items()}
        placed = cluster.replica_nodes(APP, POOL)
    finally:
        cluster.shutdown()
        redis.stop()
        shutil.rmtree(redis.folder, ignore_errors=True)
    summary = report.summary()
    return {"workers": workers, "cpus_per_worker": share, "replicas_on": placed,
            "requests_per_s": summary["requests_per_s"], "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"], "lost": summary["lost"], "rows_by_node": rows,
            "cpu_ms_per_request": {role: round(1000 * sec / args.requests, 1)
                                   for role, sec in sorted(cpu.items())}}


def rows_by_node(cluster) -> dict[str, int]:
    """Rows generated so far by the pool replica on each worker (its ``stats()``)."""
    return {node: stats["rows_served"] for node, stats in cluster.pool_stats(APP, POOL).items()}


def print_table(results: list[dict], args) -> None:
    first = min(results, key=lambda r: r["workers"])  # the speed-up's baseline
    print(f"\n{args.requests} mixed requests per run, concurrency {args.concurrency}, "
          f"max_tokens {args.max_tokens}; {os.cpu_count()} CPUs on this machine, shared by "
          "the head and the workers")
    print(f"{'WORKERS':>7} {'CPU/WORKER':>10} {'REQ/S':>7} {'SPEED-UP':>8} {'EFFICIENCY':>10} "
          f"{'P50 MS':>7} {'P99 MS':>7} {'LOST':>5}  REQ/S BY ROUND; ROWS BY WORKER")
    for r in results:
        speedup = r["requests_per_s"] / first["requests_per_s"]
        r["speedup"] = round(speedup, 2)
        r["efficiency"] = round(speedup / (r["workers"] / first["workers"]), 2)
        rows = ", ".join(f"{node} {n}" for node, n in sorted(r["rows_by_node"].items()))
        rounds = "/".join(f"{rps:g}" for rps in r["rps_by_round"])
        print(f"{r['workers']:>7} {r['cpus_per_worker']:>10g} {r['requests_per_s']:>7.2f} "
              f"{speedup:>7.2f}x {r['efficiency']:>10.2f} {r['p50_ms']:>7.0f} "
              f"{r['p99_ms']:>7.0f} {r['lost']:>5}  {rounds}; {rows}")
    print("CPU ms per request (head: gateway, router, proxy; workers: pool replicas):")
    for r in results:
        parts = ", ".join(f"{role} {ms:g}" for role, ms in r["cpu_ms_per_request"].items())
        print(f"  {r['workers']} workers: {parts}")


def combine(runs: list[dict]) -> list[dict]:
    """One row per worker count: the rounds' means (losses and rows summed)."""
    rows = []
    for workers in sorted({r["workers"] for r in runs}):
        mine = [r for r in runs if r["workers"] == workers]
        cpu: dict[str, float] = {}
        nodes: dict[str, int] = {}
        for r in mine:
            for role, ms in r["cpu_ms_per_request"].items():
                cpu[role] = cpu.get(role, 0.0) + ms / len(mine)
            for node, n in r["rows_by_node"].items():
                nodes[node] = nodes.get(node, 0) + n
        rows.append({"workers": workers, "cpus_per_worker": mine[0]["cpus_per_worker"],
                     "requests_per_s": _mean([r["requests_per_s"] for r in mine]),
                     "rps_by_round": [r["requests_per_s"] for r in mine],
                     "p50_ms": _mean([r["p50_ms"] for r in mine]),
                     "p99_ms": _mean([r["p99_ms"] for r in mine]),
                     "lost": sum(r["lost"] for r in mine), "rows_by_node": nodes,
                     "cpu_ms_per_request": {k: round(v, 1) for k, v in sorted(cpu.items())}})
    return rows


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,3", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per worker count, the order reversed every round (ABBA)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    from cluster.deploy.local import offline_defaults

    offline_defaults()
    started = time.monotonic()
    counts = [int(n) for n in args.workers.split(",")]
    runs = []
    for r in range(args.rounds):
        for n in counts if r % 2 == 0 else counts[::-1]:
            runs.append(measure(n, args) | {"round": r})
            print("measured:", json.dumps(runs[-1]), flush=True)
    results = combine(runs)
    print_table(results, args)
    print(f"({time.monotonic() - started:.0f} s in all, load average now "
          f"{os.getloadavg()[0]:.1f})")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "results": results, "runs": runs, "requests": args.requests,
            "concurrency": args.concurrency, "max_tokens": args.max_tokens,
            "rounds": args.rounds, "cpu_count": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
