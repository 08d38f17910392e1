"""``conclave eval DATA_DIR``: offline evaluation of routing strategies on outcome data.

Profiles, pilots and neighbours come from the train split only; every option is tuned by
cross-validation inside train; the test split is only scored. Writes ``DIR/eval.json`` and
the plots ``accuracy_vs_cost.png`` and ``per_domain.png`` beside it, and prints a table.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cluster.cli import main
from cluster.cli.common import fail


@main.command("eval")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--pool", default=None,
              help="Experts to route among: m1,m2,... or 'open' / 'small' (default: all).")
@click.option("--strategy", "strategies", multiple=True,
              help="Strategy to evaluate (repeatable; default: knn, pilots, hybrid).")
@click.option("--seed", default=0, show_default=True, help="Seed of the split and CV folds.")
@click.option("--folds", default=3, show_default=True, help="CV folds inside train for tuning.")
@click.option("--average", type=click.Choice(["micro", "macro"]), default="micro",
              show_default=True, help="Table figures: micro = mean over questions, macro = "
              "unweighted mean of the per-domain accuracies (eval.json has both).")
@click.option("--out", "out_dir", default="eval-out", show_default=True,
              type=click.Path(file_okay=False), help="Folder for eval.json and the plots.")
def eval_command(data_dir: str, pool: str | None, strategies: tuple[str, ...], seed: int,
                 folds: int, average: str, out_dir: str) -> None:
    """Score routing strategies on DATA_DIR (questions.jsonl + scores.csv)."""
    from routing.errors import RoutingError
    from routing.eval.plots import accuracy_vs_cost, per_domain_accuracy
    from routing.eval.run import DEFAULT_STRATEGIES, evaluate
    from routing.outcomes import OutcomeError

    try:
        result = evaluate(data_dir, pool=pool, strategies=strategies or DEFAULT_STRATEGIES,
                          seed=seed, folds=folds, average=average)
    except (OutcomeError, RoutingError, ValueError) as err:
        fail(str(err))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    accuracy_vs_cost(result, out / "accuracy_vs_cost.png")
    per_domain_accuracy(result, out / "per_domain.png")
    click.echo(format_table(result))
    click.echo(f"wrote {out / 'eval.json'}")


def format_table(result: dict) -> str:
    """The strategies and reference rows as a fixed-width table."""
    meta = result["meta"]
    macro = meta.get("average") == "macro"
    suffix = "_macro" if macro else ""
    lines = [f"{meta['data']}: {len(meta['pool'])} experts, train {meta['train']}, "
             f"test {meta['test']}, seed {meta['seed']}, {meta.get('average', 'micro')} average",
             f"{'row':24s} {'top1':>7s} {'top3+vote':>10s} {'top3 any':>9s} {'cost':>8s} "
             f"{'auto':>7s} {'experts':>8s}"]
    for name, row in result["strategies"].items():
        auto = row.get("auto") or {}
        lines.append(f"{name:24s} {_cell(row['top1' + suffix])} "
                     f"{_cell(row['top3_vote' + suffix], 10)} "
                     f"{_cell(row['top3_any'], 9)} {_cell(row['mean_cost'], 8, '.3g')} "
                     f"{_cell(auto.get('accuracy'))} {_cell(auto.get('mean_experts'), 8, '.2f')}")
    for name, value in result["reference_macro" if macro else "reference"].items():
        lines.append(f"{'ref: ' + name:24s} {_cell(value)}")
    return "\n".join(lines)


def _cell(value, width: int = 7, spec: str = ".4f") -> str:
    return f"{'—':>{width}s}" if value is None else f"{value:>{width}{spec}}"
