"""``conclave serve`` (run the service) and ``conclave route`` (ask a running one which
experts it would recruit, and why)."""

from __future__ import annotations

import json
import os
import time

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
    """Serve Conclave's OpenAI-compatible API until Ctrl-C."""
    from cluster.local_serve import start_app, stop_app

    try:
        config = read_config(config_path)
        url = start_app(config, address=address, port=port)
    except (ConfigError, ValueError, TimeoutError) as err:
        fail(str(err))
    click.echo(f"Conclave is serving at {url}  (OpenAI base URL: {url}/v1)")
    click.echo("Press Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping…")
    finally:
        stop_app(shutdown=address is None)


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
