"""``conclave serve`` (run the service) and ``conclave route`` (ask a running one which
experts it would recruit, and why)."""

from __future__ import annotations

import json
import os
import signal
import threading

import click

from cluster.cli import main
from cluster.cli.common import fail, read_config
from cluster.config import ConfigError

URL_ENV = "CONCLAVE_URL"
DEFAULT_URL = "http://127.0.0.1:8000"


@main.command("serve")
@click.option("--config", "config_path", default=None, type=click.Path(),
              help="Conclave YAML config (default: built-in defaults).")
@click.option("--address", default=None,
              help="Ray cluster address (default: start a local Ray in this process).")
@click.option("--port", default=None, type=int, help="HTTP port (default: serving.port).")
def serve_command(config_path: str | None, address: str | None, port: int | None) -> None:
    """Serve Conclave's OpenAI-compatible API until Ctrl-C or SIGTERM; then stop taking
    requests, let those in flight finish (serving.shutdown_grace_s) and exit 0."""
    from cluster.deploy.local import drain_app, start_app, stop_app

    try:
        config = read_config(config_path)
        url = start_app(config, address=address, port=port)
    except (ConfigError, ValueError, TimeoutError) as err:
        fail(str(err))
    click.echo(f"Conclave is serving at {url}  (OpenAI base URL: {url}/v1)")
    click.echo("Press Ctrl-C to stop.")
    try:
        name = wait_for_stop_signal()
        grace = config.serving.shutdown_grace_s
        click.echo(f"{name}: refusing new requests, up to {grace:g}s for those in flight…")
        left = drain_app(grace)
        if left:
            click.echo(f"{left} request(s) still running after {grace:g}s; stopping anyway")
    finally:
        stop_app(shutdown=address is None)
    click.echo("stopped")


def wait_for_stop_signal() -> str:
    """Block until SIGTERM or SIGINT arrives; its name. A second one during the drain
    raises KeyboardInterrupt: stop now, without waiting for requests in flight.

    Installed once Ray is up, on purpose: in the driver Ray's core worker puts a crash
    handler on SIGTERM (absl's failure signal handler: the "*** SIGTERM received ***"
    native stack dump) and ``ray.init`` a Python one that exits with status 15. A stop
    request is no crash; these handlers replace both for SIGTERM (SEGV & co keep Ray's)."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        if stop.is_set():
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stop.wait(1.0):
        pass
    return signal.Signals(received[0]).name


@main.command("route")
@click.argument("question")
@click.option("--url", default=None, help=f"Server URL (default: ${URL_ENV}, else {DEFAULT_URL}).")
@click.option("--model", default="conclave", help="e.g. 'conclave:k=3,strategy=skills'.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole decision as JSON.")
def route_command(question: str, url: str | None, model: str, as_json: bool) -> None:
    """Show the experts a running server would recruit for QUESTION, and why."""
    import httpx

    base = url or os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        resp = httpx.post(base.rstrip("/") + "/v1/route", timeout=60,
                          json={"query": question, "model": model})
    except httpx.HTTPError as err:
        fail(f"cannot reach Conclave at {base}: {err}")
    body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") \
        else {}
    if resp.status_code != 200:
        fail(body.get("error", {}).get("message") or f"HTTP {resp.status_code}")
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    decision = body["decision"]
    click.echo(f"strategy {decision['strategy']}, cache {body['cache']}, "
               f"{body['routing_ms']:.1f} ms")
    for expert, weight in zip(decision["experts"], decision["weights"], strict=True):
        click.echo(f"  {expert:<20} weight {weight:.3f}")
    ranked = ", ".join(f"{name} {score:.3f}" for name, score in decision["ranked"][:6]
                       if score is not None)
    click.echo(f"ranked: {ranked}")
