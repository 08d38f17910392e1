"""Start and stop Conclave on Ray Serve from a Python process (the CLI, the demo, the
benchmark): Ray (local, or the cluster at ``address``), Serve's HTTP proxy, the app."""

from __future__ import annotations

import os
import sys
import time

import httpx

from cluster.config import ConclaveConfig

APP_NAME = "conclave"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def offline_defaults() -> None:
    """What ``make`` exports, for scripts run directly (the benchmarks): no model hub, no
    tokenizer threads, no Ray usage stats; values already set win. Before Ray starts, so
    its workers inherit them."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def start_app(config: ConclaveConfig, address: str | None = None, name: str = APP_NAME,
              port: int | None = None, route_prefix: str = "/") -> str:
    """Deploy ``config`` and return the base URL once ``/v1/models`` answers.

    Without ``address`` a local Ray instance is started in this process. Several apps
    share the HTTP port under different ``route_prefix``es."""
    import ray
    from ray import serve

    from cluster.serve.app import build_app

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 namespace="conclave")
    host, port = config.serving.host, port or config.serving.port
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config.model_dump(mode="json")), name=name, route_prefix=route_prefix)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    url += route_prefix.rstrip("/")
    wait_ready(url)
    return url


def wait_ready(url: str, deadline_s: float = 120.0) -> None:
    """Poll ``/v1/models`` until the gateway answers."""
    # 401: API keys are on (tenants.enabled) and the gateway is answering
    _poll(lambda: httpx.get(url + "/v1/models", timeout=5).status_code in (200, 401),
          f"Conclave at {url} did not become ready", deadline_s)


def wait_for_expert(url: str, expert: str, deadline_s: float = 600.0,
                    headers: dict[str, str] | None = None) -> None:
    """Ask ``expert`` one token until it answers: its engine (a vLLM engine process, say)
    has started. ``headers``: e.g. an API key's Authorization."""
    body = {"model": expert, "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 1}
    _poll(lambda: httpx.post(f"{url}/v1/chat/completions", json=body,
                             headers=headers, timeout=120).status_code == 200,
          f"expert {expert!r} at {url} did not answer", deadline_s, interval_s=1.0)


def _poll(check, failure: str, deadline_s: float, interval_s: float = 0.5) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > end:
            raise TimeoutError(f"{failure} within {deadline_s:g}s")
        time.sleep(interval_s)


def drain_app(grace_s: float, name: str = APP_NAME) -> int:
    """Have the gateway refuse new requests and wait up to ``grace_s`` for those in
    flight; returns how many were still running (0: all answered)."""
    from ray import serve
    from ray.exceptions import RayError
    from ray.serve.exceptions import RayServeException

    try:
        call = serve.get_app_handle(name).drain.remote(grace_s)
        return call.result(timeout_s=grace_s + 30)
    except (RayError, RayServeException, TimeoutError) as err:  # gone already: nothing to wait for
        print(f"could not drain {name!r}: {type(err).__name__}", file=sys.stderr)
        return 0


def stop_app(name: str = APP_NAME, shutdown: bool = True) -> None:
    """Delete the app; with ``shutdown`` stop the local Ray this process started instead,
    and Serve's controller, proxy and the app with it: deleting the app first would leave
    the proxy answering 404 (no such route) until Ray stops, where a client should see the
    gateway's 503 or no listener. (``serve.shutdown()`` first would kill the controller
    under the driver's own long-poll calls, which Ray reports on stdout as failed tasks:
    noise on every clean stop.)"""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    if shutdown:
        ray.shutdown()
    else:
        serve.delete(name)
