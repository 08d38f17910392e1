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
@click.option("--default-expert", default=None,
              help="The guard's default expert (default: the best single on train, per "
              "domain where backed); must be in the pool.")
@click.option("--out", "out_dir", default="eval-out", show_default=True,
              type=click.Path(file_okay=False), help="Folder for eval.json and the plots.")
def eval_command(data_dir: str, pool: str | None, strategies: tuple[str, ...], seed: int,
                 folds: int, average: str, default_expert: str | None, out_dir: str) -> None:
    """Score routing strategies on DATA_DIR (questions.jsonl + scores.csv)."""
    from routing.errors import RoutingError
    from routing.eval.plots import accuracy_vs_cost, per_domain_accuracy
    from routing.eval.run import DEFAULT_STRATEGIES, evaluate
    from routing.outcomes import OutcomeError

    try:
        result = evaluate(data_dir, pool=pool, strategies=strategies or DEFAULT_STRATEGIES,
                          seed=seed, folds=folds, average=average,
                          default_expert=default_expert)
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
             f"{'row':24s} {'top1':>7s} {'unguard':>7s} {'held':>5s} {'top3+vote':>10s} "
             f"{'top3 any':>9s} {'cost':>8s} {'auto':>7s} {'experts':>8s}"]
    for name, row in result["strategies"].items():
        auto = row.get("auto") or {}
        lines.append(f"{name:24s} {_cell(row['top1' + suffix])} "
                     f"{_cell(row.get('top1_unguarded' + suffix))} "
                     f"{_cell(row.get('held_back'), 5, '.2f')} "
                     f"{_cell(row['top3_vote' + suffix], 10)} "
                     f"{_cell(row['top3_any'], 9)} {_cell(row['mean_cost'], 8, '.3g')} "
                     f"{_cell(auto.get('accuracy'))} {_cell(auto.get('mean_experts'), 8, '.2f')}")
    for name, value in result["reference_macro" if macro else "reference"].items():
        lines.append(f"{'ref: ' + name:24s} {_cell(value)}")
    if "pareto" in result:
        lines += cost_lines(result, suffix)
    return "\n".join(lines)


def cost_lines(result: dict, suffix: str) -> list[str]:
    """The cost at the best single's accuracy per strategy, and the Pareto front."""
    single = result["meta"]["best_single"]
    lines = [f"at the best single's accuracy ({single['expert']}, cost {single['cost']:.3g}):",
             f"{'strategy':24s} {'lambda':>7s} {'guard':>5s} {'cost':>8s} {'saving':>7s}"]
    for name, row in result["strategies"].items():
        if row.get("cost_sweep"):
            guard = row["guard_at_best_single" + suffix]
            lines.append(f"{name:24s} {_cell(row['lambda_at_best_single' + suffix], 7, '.2f')} "
                         f"{'—' if guard is None else 'on' if guard else 'off':>5s} "
                         f"{_cell(row['cost_at_best_single' + suffix], 8, '.3g')} "
                         f"{_cell(row['saving_at_best_single' + suffix], 7, '.1%')}")
    lines += ["pareto front (strategy, lambda, guard):",
              f"{'strategy':24s} {'lambda':>7s} {'guard':>5s} {'top1':>7s} {'cost':>8s}"]
    for point in result["pareto" + suffix]:
        lines.append(f"{point['strategy']:24s} {point['lambda']:7.2f} "
                     f"{'on' if point['guard'] else 'off':>5s} "
                     f"{_cell(point['top1' + suffix])} {_cell(point['mean_cost'], 8, '.3g')}")
    return lines


def _cell(value, width: int = 7, spec: str = ".4f") -> str:
    return f"{'—':>{width}s}" if value is None else f"{value:>{width}{spec}}"
