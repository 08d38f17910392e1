"""``conclave experts list|add|remove``: the expert registry, from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import yaml
from pydantic import ValidationError

from cluster.cli import main
from cluster.cli.common import fail, read_config
from cluster.config import ConfigError
from experts.errors import ExpertError
from experts.spec import ExpertSpec

REDIS_ENV = "CONCLAVE_REDIS_URL"

redis_option = click.option(
    "--redis",
    "redis_url",
    default=None,
    help=f"Redis URL or 'embedded' (default: ${REDIS_ENV}, else the config's redis.url).",
)
config_option = click.option(
    "--config", "config_path", default=None, type=click.Path(), help="Conclave YAML config."
)
url_option = click.option(
    "--url", default=None, help="A running server: go through its HTTP admin API instead of Redis."
)
token_option = click.option(
    "--token", default=None, help="Admin bearer token for --url (default: $CONCLAVE_ADMIN_TOKEN)."
)


def admin_or_registry(url: str | None, token: str | None, redis_url, config_path):
    """The HTTP admin client when ``--url`` is given, else the registry in Redis."""
    if url:
        from cluster.cli.admin_client import AdminClient

        return AdminClient(url, token)
    return open_registry(redis_url, config_path)


def open_registry(redis_url: str | None, config_path: str | None):
    """The registry named by ``--redis``, else ``$CONCLAVE_REDIS_URL``, else the config."""
    import redis

    from experts.redis_conn import connect, redact
    from experts.registry import ExpertRegistry

    config = read_config(config_path)
    url = redis_url or os.environ.get(REDIS_ENV) or config.redis.url
    try:
        client = connect(url)
        client.ping()
    except (redis.RedisError, OSError) as err:
        raise ExpertError(f"cannot reach Redis at {redact(url)}: {err}") from None
    return ExpertRegistry(client, namespace=config.redis.namespace)


def read_specs(path: str | Path) -> list[ExpertSpec]:
    """Expert specs from a YAML file: one mapping, a list of them, or ``experts: [...]``."""
    path = Path(path)
    if not path.exists():
        raise ExpertError(f"spec file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ExpertError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if isinstance(data, dict) and set(data) == {"experts"}:
        data = data["experts"]
    items = data if isinstance(data, list) else [data]
    specs = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ExpertError(f"{path}: expert #{index + 1} is not a mapping")
        try:
            specs.append(ExpertSpec.model_validate(item))
        except ValidationError as err:
            raise ExpertError(f"{path}: {_describe(err)}") from None
    return specs


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def run_guarded(action):
    """Run ``action()``; bad input becomes one error line and a non-zero exit."""
    try:
        return action()
    except (ExpertError, ConfigError) as err:
        fail(str(err))


@main.group()
def experts() -> None:
    """List, add and remove experts in the registry."""


@experts.command("list")
@redis_option
@config_option
@url_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="Print the specs as JSON.")
def list_experts(redis_url: str | None, config_path: str | None, url: str | None,
                 token: str | None, as_json: bool) -> None:
    """List registered experts."""
    specs = run_guarded(lambda: admin_or_registry(url, token, redis_url, config_path).list())
    if as_json:
        click.echo(json.dumps([spec.model_dump() for spec in specs], indent=2))
        return
    if not specs:
        click.echo("no experts registered")
        return
    click.echo(f"{'ID':<22} {'KIND':<8} {'MODEL / BASE':<34} DESCRIPTION")
    for spec in specs:
        source = spec.model if spec.kind == "model" else f"{spec.base} + {spec.id}"
        click.echo(
            f"{spec.id:<22} {spec.kind:<8} {_clip(source, 34):<34} {_clip(spec.description, 50)}"
        )


@experts.command("add")
@click.argument("spec_file", type=click.Path())
@redis_option
@config_option
@click.option(
    "--validate-on",
    "val_path",
    default=None,
    type=click.Path(),
    help="Validation JSONL (id, text, answer): run each expert on it, score the answers and "
    "store its outcomes, from which every router builds its profile.",
)
@click.option("--prompt", "val_prompt", default=None,
              help="How --validate-on asks each question: a format string with {question} "
              "(default: the question, then 'Give your final answer after \"The answer "
              "is\".'). '{question}' asks it as is, as skill experts were trained.")
@url_option
@token_option
def add_experts(
    spec_file: str, redis_url: str | None, config_path: str | None, val_path: str | None,
    val_prompt: str | None, url: str | None, token: str | None,
) -> None:
    """Register the expert(s) in SPEC_FILE (YAML)."""

    def action():
        specs = read_specs(spec_file)
        if url and val_path:
            raise ExpertError("--validate-on needs Redis access; use it without --url")
        registry = admin_or_registry(url, token, redis_url, config_path)
        if not url:  # the admin API checks these itself
            _check_adapters(specs, registry, read_config(config_path))
        if val_path:
            _validate(specs, val_path, registry, val_prompt)
        return [(spec.id, registry.add(spec)) for spec in specs]

    for expert_id, version in run_guarded(action):
        click.echo(f"added {expert_id} (registry version {version})")


@experts.command("remove")
@click.argument("expert_id")
@redis_option
@config_option
@url_option
@token_option
def remove_expert(expert_id: str, redis_url: str | None, config_path: str | None,
                  url: str | None, token: str | None) -> None:
    """Unregister EXPERT_ID."""

    def action():
        from routing.profile_store import ProfileStore

        if url:
            return admin_or_registry(url, token, None, None).remove(expert_id)

        registry = open_registry(redis_url, config_path)
        version = registry.remove(expert_id)
        ProfileStore(registry.client, registry.namespace).remove(expert_id)
        return version

    version = run_guarded(action)
    click.echo(f"removed {expert_id} (registry version {version})")


def _check_adapters(specs: list[ExpertSpec], registry, config) -> None:
    """A LoRA expert's adapter must suit its base (model, and vLLM's max_lora_rank)."""
    from experts.loader import ExpertLoader

    known = {spec.id: spec for spec in [*registry.list(), *specs]}
    checks = ExpertLoader(known.__getitem__,
                          engines={pool.name: pool.engine_choice() for pool in config.pools})
    for spec in specs:
        checks.check_adapter(spec)


def _validate(specs: list[ExpertSpec], val_path: str, registry, prompt: str | None) -> None:
    """Validate each new expert before it is registered, so none joins without a profile."""
    from routing.errors import RoutingError
    from routing.onboard import PROMPT, load_validation, validate_and_store
    from routing.outcomes import OutcomeError
    from routing.profile_store import ProfileStore

    by_id = {spec.id: spec for spec in specs}
    store = ProfileStore(registry.client, registry.namespace)
    try:
        rows = load_validation(val_path)
        for spec in specs:
            table = validate_and_store(spec, rows, lambda i: by_id.get(i) or registry.get(i),
                                       store, prompt=_checked_prompt(prompt or PROMPT))
            accuracy = float(table.scores.mean())
            click.echo(f"validated {spec.id}: {accuracy:.3f} on {len(table)} questions")
    except (OutcomeError, RoutingError) as err:
        raise ExpertError(str(err)) from None


def _checked_prompt(prompt: str) -> str:
    try:
        prompt.format(question="")
    except (KeyError, IndexError, ValueError):
        raise ExpertError(f"--prompt {prompt!r}: only {{question}} may be used") from None
    if "{question}" not in prompt:
        raise ExpertError(f"--prompt {prompt!r} does not hold {{question}}")
    return prompt


def _clip(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
