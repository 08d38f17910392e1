"""``conclave experts train`` (a LoRA expert from a JSONL data set) and ``conclave experts
skill-data`` (the generated data of the bundled skill experts, :mod:`experts.skills`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cluster.cli.experts import experts, run_guarded
from experts.errors import ExpertError


@experts.command("train")
@click.option("--base", required=True, help="Base model: a local folder or "
              "local:smollm2-135m-instruct (the prepared real model).")
@click.option("--data", "data_path", required=True, type=click.Path(),
              help='JSONL: {"messages": [...]} or {"prompt", "answer"} per line.')
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Adapter folder.")
@click.option("--steps", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--rank", default=8, show_default=True, type=click.IntRange(1, 64))
@click.option("--targets", default="q_proj,k_proj,v_proj,o_proj", show_default=True,
              help="Comma-separated linear modules to adapt.")
@click.option("--top-layers", default=None, type=click.IntRange(min=1),
              help="Adapt only the top N layers (cheaper steps). Default: all.")
@click.option("--seed", default=0, show_default=True, type=int)
def train(base: str, data_path: str, out_dir: str, steps: int, batch_size: int, lr: float,
          rank: int, targets: str, top_layers: int | None, seed: int) -> None:
    """Train a LoRA expert on BASE (loss on the answers only); `conclave experts add`
    accepts the result with `kind: lora, adapter: OUT`."""
    from tqdm import tqdm

    from experts.lora_training import TrainOptions, train_expert
    from experts.real_model import resolve_alias

    options = TrainOptions(steps=steps, batch_size=batch_size, lr=lr, rank=rank, seed=seed,
                           alpha=2.0 * rank, top_layers=top_layers,
                           target_modules=[t.strip() for t in targets.split(",") if t.strip()])
    with tqdm(total=steps, desc="train", unit="step") as bar:
        def progress(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")

        def action() -> dict:
            if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
                raise ExpertError(f"--out {out_dir!r} exists and is not empty")
            return train_expert(resolve_alias(base), data_path, out_dir, options, progress)

        facts = run_guarded(action)
    click.echo(f"trained {out_dir}: {facts['examples']} examples, {steps} steps, loss "
               f"{facts['first_loss']} → {facts['final_loss']} ({facts['seconds']} s)")


@experts.command("skill-data")
@click.argument("skill")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--count", default=2000, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--validation", is_flag=True, help='Write {"id", "text", "answer", "domain"} '
              "lines, for `conclave experts add --validate-on`.")
@click.option("-o", "--out", "out_path", required=True, type=click.Path(), help="JSONL file.")
def skill_data(skill: str, split: str, count: int, seed: int, validation: bool,
               out_path: str) -> None:
    """Write SKILL's generated items ({"prompt", "answer"} lines, the training format); test
    inputs never appear in train."""
    from experts.skills import skill_items

    def action():
        try:
            return skill_items(skill, split, count, seed)
        except ValueError as err:
            raise ExpertError(str(err)) from None

    items = run_guarded(action)
    rows = [{"id": f"{skill}-{split}-{seed}-{n}", "text": item.question, "answer": item.answer,
             "domain": skill} if validation else {"prompt": item.question, "answer": item.answer}
            for n, item in enumerate(items)]
    Path(out_path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    click.echo(f"wrote {len(items)} {split} items of {skill} to {out_path}")
