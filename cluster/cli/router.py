"""``conclave router train DATA_DIR --out DIR``: train the learned (contrastive) router on
an outcome folder (:mod:`routing.router_training`); point ``routing.trained_router`` at DIR
and the router deployment loads it."""

from __future__ import annotations

import click

from cluster.cli import main
from cluster.cli.common import fail


@main.group()
def router() -> None:
    """Train the learned router."""


@router.command("train")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--pool", default=None,
              help="Experts to route among: m1,m2,... or 'open' / 'small' (default: all).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for router.safetensors, train.json and loss_curve.png.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split and training.")
@click.option("--all", "all_questions", is_flag=True,
              help="Train on every question (default: the eval's train split, scored on test).")
@click.option("--max-steps", default=None, type=click.IntRange(min=1),
              help="Training steps at most (default: the documented schedule's).")
@click.option("--encoder-layers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Fine-tune the encoder's top N layers instead of training a head over its "
                   "frozen embeddings (minutes; measured no better on MMLU-Pro, see README).")
def train_command(data_dir: str, pool: str | None, out_dir: str, seed: int,
                  all_questions: bool, max_steps: int | None, encoder_layers: int) -> None:
    """Train the contrastive router on DATA_DIR (questions.jsonl + scores.csv)."""
    from routing.errors import RoutingError
    from routing.outcomes import OutcomeError
    from routing.router_training import train_router

    schedule = {} if max_steps is None else {"max_steps": max_steps}
    if encoder_layers:
        schedule["encoder_layers"] = encoder_layers
    try:
        report = train_router(data_dir, out_dir, pool=pool, seed=seed,
                              all_questions=all_questions, **schedule)
    except (OutcomeError, RoutingError, ValueError) as err:
        fail(str(err))
    click.echo(f"trained on {report['train']} questions, {len(report['experts'])} experts, "
               f"in {report['seconds']} s; best held-out top-1 "
               f"{report['best_holdout_top1']:.4f} at step {report['best_step']}")
    if "test_top1" in report:
        click.echo(f"test top-1 {report['test_top1']:.4f} (macro {report['test_top1_macro']:.4f})"
                   f" on {report['test']} questions")
    click.echo(f"wrote {report['weights']}, loss curve {report['plot']}")
