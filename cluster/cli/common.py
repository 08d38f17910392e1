"""Helpers shared by the CLI commands."""

from __future__ import annotations

import click

from cluster.config import ConclaveConfig, load_config, parse_config


def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit non-zero."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def read_config(path: str | None) -> ConclaveConfig:
    """The config at ``path``, or the defaults."""
    return load_config(path) if path else parse_config({})
