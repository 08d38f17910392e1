"""``conclave keys create|list|revoke|usage``: API keys, through a running server's admin
API (``/v1/keys``; the admin token from ``--token`` or ``$CONCLAVE_ADMIN_TOKEN``).

The spec is checked here first, so a bad value fails before any call, naming its field.
The plain key is printed once, by ``create``; the server keeps only its salted hash.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import click
from pydantic import ValidationError

from cluster.cli import main
from cluster.cli.common import fail
from cluster.tenants.keys import KeySpec
from experts.errors import ExpertError

URL_ENV = "CONCLAVE_URL"

url_option = click.option("--url", default=lambda: os.environ.get(URL_ENV, "http://127.0.0.1:8000"),
                          show_default=f"${URL_ENV} or http://127.0.0.1:8000",
                          help="The running server.")
token_option = click.option("--token", default=None,
                            help="Admin bearer token (default: $CONCLAVE_ADMIN_TOKEN).")


def call(url: str, token: str | None, method: str, path: str, **kwargs) -> dict:
    """One admin call; a refusal or an unreachable server exits with its one line."""
    from cluster.cli.admin_client import AdminClient

    try:
        return AdminClient(url, token).send(method, path, **kwargs)
    except ExpertError as err:
        fail(str(err))


def key_spec(name: str, limits: dict, expires_in_days: float | None, experts: tuple,
             pools: tuple) -> KeySpec:
    """The spec the options describe; a bad value exits naming its field."""
    expires = None
    if expires_in_days is not None:
        expires = datetime.fromtimestamp(time.time() + expires_in_days * 86400, tz=UTC)
    try:
        return KeySpec(name=name, expires_at=expires, experts=list(experts), pools=list(pools),
                       limits={k: v for k, v in limits.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        fail(f"{where}: {first['msg']}")


@main.group()
def keys() -> None:
    """API keys of a running server: create, list, revoke, usage."""


@keys.command("create")
@click.argument("name")
@click.option("--rpm", type=int, help="Requests per minute.")
@click.option("--tpm", type=int, help="Tokens per minute (every panel call counted).")
@click.option("--budget-tokens", type=int, help="Tokens per budget period.")
@click.option("--budget-period-s", type=int, help="Budget period in seconds (default a day).")
@click.option("--expires-in-days", type=float, help="Expire this many days from now.")
@click.option("--expert", "experts", multiple=True, help="Allowed expert (repeatable).")
@click.option("--pool", "pools", multiple=True, help="Allowed pool (repeatable).")
@url_option
@token_option
def create(name, rpm, tpm, budget_tokens, budget_period_s, expires_in_days, experts, pools,
           url, token) -> None:
    """Create a key; prints it once (store it: it cannot be shown again)."""
    limits = {"rpm": rpm, "tpm": tpm, "budget_tokens": budget_tokens,
              "budget_period_s": budget_period_s}
    spec = key_spec(name, limits, expires_in_days, experts, pools)
    made = call(url, token, "POST", "/v1/keys", json=spec.model_dump(mode="json"))
    click.echo(made["key"])
    click.echo(f"key {made['name']!r} (id {made['id']}) created; it is shown only now", err=True)


@keys.command("list")
@url_option
@token_option
def list_keys(url, token) -> None:
    """List keys (names, ids, limits, expiry, revoked): never the keys themselves."""
    for record in call(url, token, "GET", "/v1/keys")["data"]:
        state = "revoked" if record["revoked_at"] else "live"
        limits = {k: v for k, v in record["limits"].items() if v is not None}
        click.echo(f"{record['name']:24} {record['id']}  {state:7} "
                   f"expires={record['expires_at'] or 'never'} limits={json.dumps(limits)}")


@keys.command("revoke")
@click.argument("name")
@url_option
@token_option
def revoke(name, url, token) -> None:
    """Revoke the live key NAME (refused by every gateway replica within a second)."""
    call(url, token, "DELETE", f"/v1/keys/{name}")
    click.echo(f"revoked {name}")


@keys.command("usage")
@url_option
@token_option
def usage(url, token) -> None:
    """Every key's usage: requests, tokens and cost, as JSON."""
    click.echo(json.dumps(call(url, token, "GET", "/v1/keys/usage")["data"], indent=2))
