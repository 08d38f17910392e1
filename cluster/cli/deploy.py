"""``conclave deploy render``: the Serve config for Docker Compose or KubeRay, from one config."""

from __future__ import annotations

import click

from cluster.cli import main
from cluster.cli.common import fail
from cluster.config import ConfigError, load_config
from cluster.deploy import render as serve_config


@main.group()
def deploy() -> None:
    """Deployment files (docker-compose, KubeRay) generated from a Conclave config."""


@deploy.command()
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(),
    help="Conclave YAML config (default: configs/k8s.yaml or configs/compose.yaml by target).",
)
@click.option("--target", type=click.Choice(serve_config.TARGETS), default="k8s", show_default=True)
@click.option("--write", is_flag=True, help="Rewrite the committed files for the target.")
@click.option("--check", is_flag=True, help="Exit 1 if the committed files differ.")
@click.option("--root", default=".", type=click.Path(file_okay=False), help="Repository root.")
def render(config_path: str | None, target: str, write: bool, check: bool, root: str) -> None:
    """Print the Serve config (the RayService's serveConfigV2 for k8s), or --write/--check
    the committed files."""
    if write and check:
        fail("--write and --check exclude each other")
    try:
        config = load_config(config_path or serve_config.DEFAULT_CONFIGS[target])
        unplaced = serve_config.k8s_placement(config, root) if target == "k8s" else []
        if unplaced and (check or write):
            fail("k8s/rayservice.yaml cannot host the app: " + "; ".join(unplaced))
        if check:
            stale = serve_config.drift(config, target, root)
            if stale:
                fail(f"out of date: {', '.join(stale)} (run with --write)")
            click.echo(f"up to date: {target}")
        elif write:
            for path in serve_config.write(config, target, root):
                click.echo(f"wrote {path}")
        else:
            click.echo(serve_config.to_yaml(serve_config.serve_config(config, target)), nl=False)
    except ConfigError as err:
        fail(str(err))
