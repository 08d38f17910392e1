"""``conclave aggregators select|show|clear``: choose the aggregator per task with
Symbolic-MoE's probe (:func:`routing.aggregate.select_aggregators`) and keep the choice in
Redis, where the router (per query) and the batch job pick it up."""

from __future__ import annotations

import click

from cluster.cli import main
from cluster.cli.common import fail, read_config
from cluster.cli.experts import config_option, open_registry, redis_option, run_guarded


@main.group()
def aggregators() -> None:
    """Choose, show and clear the aggregator expert per task."""


@aggregators.command("select")
@click.option("--outcomes", "outcomes_dir", required=True, type=click.Path(),
              help="Outcome folder (questions.jsonl, scores.csv, predictions.csv).")
@click.option("--candidates", default=None,
              help="Experts to try as aggregators: a,b,... (default: the outcome table's "
              "registered experts).")
@click.option("--per-domain", default=20, show_default=True, type=click.IntRange(min=1),
              help="Probe questions per domain.")
@click.option("--max-tokens", default=32, show_default=True, type=click.IntRange(min=1),
              help="Tokens each candidate generates per probe at most.")
@click.option("--seed", default=0, show_default=True, help="Seed of the probe sampling.")
@config_option
@redis_option
def select(outcomes_dir: str, candidates: str | None, per_domain: int, max_tokens: int,
           seed: int, config_path: str | None, redis_url: str | None) -> None:
    """Run the probe on OUTCOMES validation predictions and store the choice."""
    from routing.aggregate import AggregatorChoice, AggregatorStore, select_aggregators
    from routing.errors import RoutingError

    outcomes = _load_outcomes(outcomes_dir)
    registry = run_guarded(lambda: open_registry(redis_url, config_path))
    specs = run_guarded(lambda: _known_specs(config_path, registry))
    names = _candidates(candidates, outcomes.experts, specs)
    answer = _answerer(specs, read_config(config_path).pools[0], max_tokens)
    try:
        aggregator, table = run_guarded(lambda: select_aggregators(
            outcomes, names, answer, per_domain=per_domain, seed=seed))
    except RoutingError as err:
        fail(str(err))
    if not table:
        fail(f"{outcomes_dir}: no probe questions (each needs one expert right and two "
             "different wrong predictions)", code=2)
    choice = AggregatorChoice.from_probe(aggregator, table)
    store = AggregatorStore(registry.client, namespace=registry.namespace)
    run_guarded(lambda: store.save(choice))
    click.echo(format_choice(choice))
    click.echo(f"saved to {store.key}")


@aggregators.command("show")
@config_option
@redis_option
def show(config_path: str | None, redis_url: str | None) -> None:
    """Print the stored choice."""
    choice = run_guarded(lambda: _store(redis_url, config_path).load())
    click.echo(format_choice(choice) if choice else
               "no aggregator choice stored (`conclave aggregators select` makes one)")


@aggregators.command("clear")
@config_option
@redis_option
def clear(config_path: str | None, redis_url: str | None) -> None:
    """Delete the stored choice (the best-weighted expert aggregates again)."""
    cleared = run_guarded(lambda: _store(redis_url, config_path).clear())
    click.echo("cleared the aggregator choice" if cleared else "no aggregator choice stored")


def format_choice(choice) -> str:
    """The accuracy table with the chosen aggregator per domain, then the fallback."""
    names = list(dict.fromkeys(c for row in choice.table.values() for c in row))
    domains = list(dict.fromkeys([*choice.table, *choice.by_domain]))
    width = max([6, *map(len, domains)])
    lines = [f"{'domain':<{width}} " + " ".join(f"{n:>10}" for n in names) + "  chosen"]
    for domain in domains:
        row = choice.table.get(domain, {})
        cells = " ".join(f"{row[n]:>10.3f}" if n in row else f"{'—':>10}" for n in names)
        lines.append(f"{domain:<{width}} {cells}  {choice.by_domain.get(domain, '—')}")
    lines.append(f"fallback: {choice.fallback or '—'}")
    return "\n".join(lines)


def _load_outcomes(path: str):
    from routing.outcomes import OutcomeError, load_outcomes

    try:
        outcomes = load_outcomes(path)
    except (OutcomeError, OSError) as err:
        fail(str(err), code=2)
    if outcomes.predictions is None:
        fail(f"{path}: no predictions.csv; the probe is built from validation predictions",
             code=2)
    return outcomes


def _known_specs(config_path: str | None, registry) -> dict:
    """Expert specs by id: the config's (and the demo pool's), then the registry's."""
    specs = {spec.id: spec for spec in read_config(config_path).start_specs()}
    for spec in registry.list():
        specs.setdefault(spec.id, spec)
    return specs


def _candidates(option: str | None, experts: list[str], specs: dict) -> list[str]:
    if option is None:
        names = [name for name in experts if name in specs]
        if not names:
            fail("none of the outcome table's experts is registered; pass --candidates", code=2)
        return names
    names = list(dict.fromkeys(n.strip() for n in option.split(",") if n.strip()))
    unknown = [name for name in names if name not in specs]
    if unknown or not names:
        fail(f"unknown candidate(s) {unknown or option!r}; known: {sorted(specs)}", code=2)
    return names


def _answerer(specs: dict, pool_cfg, max_tokens: int):
    """``answer(candidate, prompts) -> texts``: one batched generate per candidate, through
    the batch job's model pool."""
    from cluster.cli.batch import expert_runner
    from experts.loader import engine_key
    from routing.planner import Step

    runner = expert_runner(list(specs.values()), pool_cfg, max_tokens)

    def answer(candidate: str, prompts: list) -> list[str]:
        if not prompts:
            return []
        tasks = [(row, candidate) for row in range(len(prompts))]
        out = runner.run([Step(engine_key(specs[candidate]), tasks, load=False)],
                         {task: prompts[task[0]] for task in tasks})
        return [out[task].text for task in tasks]

    return answer


def _store(redis_url: str | None, config_path: str | None):
    from routing.aggregate import AggregatorStore

    registry = open_registry(redis_url, config_path)
    return AggregatorStore(registry.client, namespace=registry.namespace)
