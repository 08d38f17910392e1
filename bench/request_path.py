"""Which of our source files one routed chat runs, and in which process: measured, not read.

    python bench/request_path.py [--engine vllm|hf] [--json FILE]

The demo app's real code — the gateway's HTTP app and service, the :class:`RouterServer`
and :class:`ExpertPoolServer` deployment classes, the engines — runs in this one process;
only Ray's hops are replaced: a handle's ``.remote()`` calls the deployment's method here,
and the pool's multiplexed lookup (``serve.get_multiplexed_model_id``, ``serve.multiplexed``)
reads the key the handle was pinned to. A profile hook (``sys.setprofile`` on every thread)
records each function of this repository that is called while one routed chat (``model:
conclave``, the demo's default routing, k=2 and synthesis) is answered, after a first chat
has loaded everything. Each call is booked to the process it would run in: a context
variable set by the stand-in handles (it follows ``asyncio.to_thread``), and for the
engine's own loop thread (vLLM), the pool. Background threads (the catalog's resync) are
not booked.

Prints the files by process, each with the functions run in it; ``--json`` writes
``files_per_routed_chat`` (the goal: at most 30), ``files`` (by process) and ``functions``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import sys
import threading
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = tuple(str(ROOT / package) + "/" for package in ("cluster", "routing", "experts"))
ROLE: contextvars.ContextVar[str | None] = contextvars.ContextVar("role", default=None)
QUESTIONS = ["What is the derivative of x squared times sine of x?",  # loads everything
             "How do I integrate x times e to the x by parts?"]  # measured: a cache miss


class Recorder:
    """The profile hook: (process, file, function) of every call into our packages."""

    def __init__(self):
        self.on = False
        self.calls: set[tuple[str, str, str]] = set()

    def __call__(self, frame, event, _arg):
        if not self.on or event != "call":
            return
        path = frame.f_code.co_filename
        if not path.startswith(SOURCES):
            return
        role = ROLE.get() or ("pool" if threading.current_thread().name.startswith("vllm-")
                              else None)
        if role is not None:
            self.calls.add((role, path[len(str(ROOT)) + 1:], frame.f_code.co_qualname))


class Remote:
    """``handle.method.remote(*args)`` for an object here, run under ``role``."""

    def __init__(self, role: str, method, before=lambda: None):
        self.role, self.method, self.before = role, method, before

    def remote(self, *args):
        """A task in a context of its own (as in another process), booked to ``role``."""
        context = contextvars.copy_context()
        context.run(ROLE.set, self.role)
        context.run(self.before)
        return asyncio.get_running_loop().create_task(self.method(*args), context=context)


class PoolHandle:
    """The pool deployment's handle: ``.options(multiplexed_model_id=key)`` pins a key."""

    def __init__(self, server, key: str | None = None):
        self.server, self.key = server, key
        pin = lambda: PINNED.set(key)  # noqa: E731
        self.generate_many = Remote("pool", server.generate_many, pin)

    def options(self, multiplexed_model_id=None, **_):
        return PoolHandle(self.server, multiplexed_model_id or self.key)


PINNED: contextvars.ContextVar[str | None] = contextvars.ContextVar("pinned", default=None)


async def build(engine: str):
    """The gateway, router and pool objects of the demo config, wired in-process."""
    from cluster.config import load_config, parse_config
    from cluster.serve import pool as pools
    from cluster.serve.app import runtime_config, seed_registry
    from cluster.serve.gateway import Gateway
    from cluster.serve.router import RouterServer

    config = load_config(ROOT / "configs" / "tiny.yaml").model_dump(mode="json")
    # A namespace of its own: the measured question must miss the pattern cache.
    config["redis"] = {"url": "embedded", "namespace": f"request-path-{uuid.uuid4().hex[:8]}"}
    for pool in config["pools"]:
        pool.update(engine=engine)
    config = runtime_config(parse_config(config))  # as build_app does before deploying
    seed_registry(config)
    config = config.model_dump(mode="json")
    pools.serve.get_multiplexed_model_id = PINNED.get  # Serve's lookups, done here
    pools.serve.multiplexed = lambda **_: cached
    router = RouterServer(config)
    servers = {}
    for pool in config["pools"]:  # as Serve builds a replica: the constructor is async
        servers[pool["name"]] = pools.ExpertPoolServer.__new__(pools.ExpertPoolServer)
        await servers[pool["name"]].__init__(config, pool["name"])

    class RouterHandle:
        route_many = Remote("router", router.route_many)

    gateway = Gateway(config, RouterHandle(), {n: PoolHandle(s) for n, s in servers.items()},
                      token="request-path")
    return gateway, servers


def cached(load):
    """Serve's multiplexed cache, done here: ``load(key)`` once per key."""
    engines: dict = {}

    async def get(key: str):
        if key not in engines:
            engines[key] = await load(key)
        return engines[key]

    return get


async def chat(app, question: str) -> dict:
    import httpx

    token = ROLE.set("gateway")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://conclave", timeout=300) as client:
            resp = await client.post("/v1/chat/completions", json={
                "model": "conclave", "max_tokens": 8,
                "messages": [{"role": "user", "content": question}]})
    finally:
        ROLE.reset(token)
    resp.raise_for_status()
    return resp.json()


async def measure(engine: str) -> tuple[Recorder, dict]:
    gateway, servers = await build(engine)
    app = gateway.__serve_build_asgi_app__()
    await chat(app, QUESTIONS[0])
    recorder = Recorder()
    hook_threads(recorder, servers)
    recorder.on = True
    try:
        reply = await chat(app, QUESTIONS[1])
    finally:
        recorder.on = False
        hook_threads(None, servers)
        for server in servers.values():
            server.__del__()  # stops the vLLM engine processes
    return recorder, reply["conclave"]


def hook_threads(hook, servers: dict) -> None:
    """``hook`` on this thread, on the worker threads ``asyncio.to_thread`` will start (a
    fresh executor) and on each resident vLLM engine's loop thread (Python 3.11 has no
    ``threading.setprofile_all_threads``)."""
    from concurrent.futures import ThreadPoolExecutor

    sys.setprofile(hook)
    threading.setprofile(hook)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor())
    for server in servers.values():
        for engine in server.engines().values():
            loop = getattr(engine, "_loop", None)
            if loop is not None:
                loop.call_soon_threadsafe(sys.setprofile, hook)


def report(recorder: Recorder) -> dict:
    files: dict[str, set[str]] = defaultdict(set)
    functions: dict[str, list[str]] = defaultdict(list)
    for role, path, name in sorted(recorder.calls):
        files[role].add(path)
        functions[path].append(name)
    every = sorted({path for paths in files.values() for path in paths})
    for role in ("gateway", "router", "pool"):
        print(f"\n{role} ({len(files[role])} files)")
        for path in sorted(files[role]):
            print(f"  {path:34s} {', '.join(sorted(set(functions[path])))[:150]}")
    print(f"\nfiles_per_routed_chat  {len(every)}  (goal <= 30)")
    return {"files_per_routed_chat": len(every),
            "files": {role: sorted(paths) for role, paths in files.items()},
            "functions": {path: sorted(set(names)) for path, names in functions.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--json", dest="json_file", help="Write the figures to this file.")
    args = parser.parse_args()
    from cluster.deploy.local import offline_defaults

    offline_defaults()
    recorder, info = asyncio.run(measure(args.engine))
    print(f"experts {[e['id'] for e in info['experts']]}  aggregation {info['aggregation']}")
    figures = report(recorder)
    figures.update(engine=args.engine, experts=[e["id"] for e in info["experts"]],
                   aggregation=info["aggregation"])
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
