"""Soak: the demo pool on local Ray Serve under mixed load for N minutes while faults are
injected on a schedule; did every request still get its answer?

    python bench/soak.py [--minutes 3] [--fault-every 20] [--concurrency 8] [--json FILE]

The app runs with two expert-pool and two router replicas and its own password-protected Redis. Every
``--fault-every`` seconds the next fault of the cycle fires: kill an expert-pool replica,
stop Redis for a few seconds and start it again, add an expert, remove it, crash a router
replica. Load goes to
127.0.0.1 only. Prints requests, successes, failovers, errors, p50/p99 and the faults;
``--json`` writes those figures with top-level keys ``requests``, ``lost``, ``errors_5xx``,
``failovers``, ``p99_ms`` (and more).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny.yaml"
APP = "soak"
POOL = "pool-default"
EXTRA_ID = "soak-extra"
EXTRA_EXAMPLES = ["how long should sourdough bread dough proof",
                  "what flour is best for sourdough bread"]


def soak_config(redis_url: str, token: str, port: int):
    """The demo config with this run's Redis, two pool and two router replicas and an
    admin token."""
    from cluster.config import load_config

    config = load_config(CONFIG)
    data = config.model_dump(mode="json")
    data["redis"] = {"url": redis_url, "namespace": "soak"}
    data["pools"][0].update(num_replicas=2)
    data["routing"].update(num_replicas=2)
    data["serving"].update(admin_token=token, port=port)
    return type(config).model_validate(data)


def questions() -> list[str]:
    from experts.demo import PROFILES

    return [text for profile in PROFILES for text in profile["examples"]] + EXTRA_EXAMPLES


def extra_spec() -> dict:
    """A LoRA expert to add and remove during the run (the demo's math adapter, re-used)."""
    from experts.demo import build_demo_pool

    lora = next(spec for spec in build_demo_pool() if spec.kind == "lora")
    return {"id": EXTRA_ID, "kind": "lora", "base": lora.base, "adapter": lora.adapter,
            "description": "sourdough baking questions", "examples": EXTRA_EXAMPLES}


def fault_cycle(url: str, token: str, redis) -> list[tuple[str, object]]:
    """(name, action) of each fault, in the order they fire (then again from the top)."""
    from faults import crash_replica, kill_replica

    auth = {"Authorization": f"Bearer {token}"}

    def admin(method: str, path: str, body: dict | None = None) -> int:
        resp = httpx.request(method, url + path, json=body, headers=auth, timeout=60)
        resp.raise_for_status()
        return resp.status_code

    return [
        ("kill an expert-pool replica", lambda: kill_replica(APP, POOL).name),
        ("Redis down for 3 s", lambda: redis.outage(3.0)),
        (f"add expert {EXTRA_ID}", lambda: admin("POST", "/v1/experts", extra_spec())),
        (f"remove expert {EXTRA_ID}", lambda: admin("DELETE", f"/v1/experts/{EXTRA_ID}")),
        ("crash a router replica (frozen 1 s, then SIGKILL)",
         lambda: crash_replica(APP, "router", stall_s=1.0).name),
    ]


def schedule(cycle: list, minutes: float, every_s: float) -> list:
    from loadgen import Fault

    faults = []
    for i in range(int(minutes * 60 // every_s)):
        name, action = cycle[i % len(cycle)]
        if (i + 1) * every_s < minutes * 60:
            faults.append(Fault(name, action, after_s=(i + 1) * every_s))
    return faults


def soak(args) -> dict:
    from faults import RestartableRedis
    from loadgen import MixedLoad

    from cluster.deploy.local import start_app, stop_app

    redis = RestartableRedis(tempfile.mkdtemp(prefix="csoak-"),
                             password=secrets.token_urlsafe(16)).start()
    token = secrets.token_urlsafe(24)
    try:
        url = start_app(soak_config(redis.url, token, args.port), name=APP, port=args.port)
        load = MixedLoad(url, questions(), direct=["general-base"],
                         concurrency=args.concurrency, max_tokens=args.max_tokens)
        asyncio.run(load.run(requests=4 * args.concurrency))  # warm-up: load the models
        faults = schedule(fault_cycle(url, token, redis), args.minutes, args.fault_every)
        report = asyncio.run(load.run(duration_s=args.minutes * 60, faults=faults))
    finally:
        stop_app(APP)
        redis.stop()
    print(f"\nsoak: {args.minutes:g} min, concurrency {args.concurrency}, "
          f"max_tokens {args.max_tokens}, a fault every {args.fault_every:g} s")
    print(report.table())
    return report.summary()


def main() -> None:
    # The load generator and the faults are test tooling (tests/loadgen.py, tests/faults.py).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    from cluster.deploy.local import offline_defaults

    offline_defaults()
    figures = soak(args)
    if args.json_path:
        figures.update(minutes=args.minutes, concurrency=args.concurrency,
                       fault_every_s=args.fault_every, max_tokens=args.max_tokens)
        Path(args.json_path).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
