"""``conclave experts train-gates``: PHATGOOSE gates for a registered LoRA expert.

The gates make the expert usable in a ``mixture`` expert (GLIDER's local router); they are
saved next to the adapter as ``gates.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cluster.cli.experts import config_option, experts, open_registry, redis_option, run_guarded
from experts.errors import ExpertError


def read_texts(path: str | Path) -> list[str]:
    """The ``"text"`` of every row of a JSONL file; bad rows are named by line number."""
    path = Path(path)
    if not path.exists():
        raise ExpertError(f"data file not found: {path}")
    texts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ExpertError(f"{path}:{number}: not JSON: {err.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ExpertError(f'{path}:{number}: a row needs a string "text"')
        texts.append(row["text"])
    if not texts:
        raise ExpertError(f"{path}: no examples")
    return texts


def train_expert_gates(registry, expert_id: str, texts: list[str], **options) -> Path:
    """Train and save the gates of the registered lora expert ``expert_id``."""
    from experts.gates import save_gates, train_gates
    from experts.spec import is_local_path

    spec = registry.get(expert_id)
    if spec.kind != "lora":
        raise ExpertError(f"expert {expert_id!r} is a {spec.kind!r} expert; gates need a lora one")
    if not is_local_path(spec.adapter):
        raise ExpertError(
            f"expert {expert_id!r}: adapter {spec.adapter!r} is not a local folder; "
            "gates are saved next to the adapter"
        )
    base = registry.get(spec.base)
    gates = train_gates(base.model, spec.adapter, texts, **options)
    return save_gates(spec.adapter, gates, steps=options.get("steps"))


@experts.command("train-gates")
@click.argument("expert_id")
@click.option("--data", "data_path", required=True, type=click.Path(), help='JSONL, "text".')
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=5e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", default=0, show_default=True, type=int)
@redis_option
@config_option
def train_gates_command(
    expert_id: str,
    data_path: str,
    steps: int,
    lr: float,
    seed: int,
    redis_url: str | None,
    config_path: str | None,
) -> None:
    """Train EXPERT_ID's PHATGOOSE gates on its own examples (LM loss; base and adapter frozen)."""

    def action():
        texts = read_texts(data_path)
        registry = open_registry(redis_url, config_path)
        path = train_expert_gates(registry, expert_id, texts, steps=steps, lr=lr, seed=seed)
        return path, len(texts)

    path, count = run_guarded(action)
    click.echo(f"trained gates for {expert_id} on {count} examples ({steps} steps): {path}")
