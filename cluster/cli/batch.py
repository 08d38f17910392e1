"""``conclave batch IN.jsonl -o OUT.jsonl``: answer a file of queries offline, each expert
loaded once per chunk (see :mod:`routing.batch_job`). Rerun with the same OUT to resume."""

from __future__ import annotations

import hashlib
import json
import os

import click

from cluster.cli import main
from cluster.cli.common import fail, read_config
from cluster.cli.experts import REDIS_ENV


@main.command()
@click.argument("in_path", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Output JSONL; ids already in it are skipped (resume).")
@click.option("--config", "config_path", default=None, type=click.Path(),
              help="Conclave YAML config (experts, routing, pool budget).")
@click.option("--chunk-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Queries planned together; each expert loads once per chunk.")
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(min=1),
              help="Tokens each expert (and aggregator) generates at most.")
@click.option("--no-cache", is_flag=True, help="Do not use the pattern cache.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def batch(in_path: str, out_path: str, config_path: str | None, chunk_size: int,
          max_tokens: int, no_cache: bool, quiet: bool) -> None:
    """Route, plan, run and aggregate every query of IN_PATH ({"id", "text"} lines)."""
    from cluster.config import ConfigError
    from experts.errors import ExpertError
    from routing.batch_job import pending
    from routing.errors import RoutingError

    if not os.path.isfile(in_path):
        fail(f"input file not found: {in_path}")
    try:
        todo, report = pending(in_path, out_path)
        if todo:  # nothing left to do: no need to load the router and the experts
            job = build_batch_job(read_config(config_path), chunk_size=chunk_size,
                                  max_tokens=max_tokens, cache=not no_cache,
                                  progress=not quiet)
            job.run_queries(todo, out_path, report)
    except (ConfigError, ExpertError, RoutingError, OSError) as err:
        fail(str(err))
    for problem in report.problems:
        click.echo(f"skipped {problem}", err=True)
    click.echo(json.dumps({"read": report.read, "already_done": report.already_done,
                           "written": report.written, "loads": report.loads,
                           "problems": len(report.problems)}))


def build_batch_job(config, *, chunk_size: int = 256, max_tokens: int = 64, cache: bool = True,
                    progress: bool = True):
    """A :class:`~routing.batch_job.BatchJob` over the config's experts (and the demo pool).
    The aggregator choice stored by ``conclave aggregators select``, when there is one,
    picks each row's aggregator (:func:`routing.aggregate.choose_aggregator`);
    otherwise, as when it names no configured expert, the most competent expert does."""
    from experts.loader import engine_key
    from routing.aggregate import Aggregator
    from routing.batch_job import BatchJob
    from routing.cache import build_pattern_cache
    from routing.options import RouteOptions
    from routing.planner import BatchPlanner
    from routing.router import build_router

    specs = _specs(config)
    by_id = {spec.id: spec for spec in specs}
    version = specs_version(specs)
    url = os.environ.get(REDIS_ENV) or config.redis.url
    patterns = None
    if cache:
        patterns = build_pattern_cache(config.routing.cache, url,
                                       namespace=config.redis.namespace)
    router = build_router(config, specs, None, cache=patterns, version=lambda: version)
    pool_cfg = config.pools[0]
    routing = config.routing
    return BatchJob(
        router,
        BatchPlanner(lambda e: engine_key(by_id[e]), max_resident=pool_cfg.max_resident_models),
        expert_runner(specs, pool_cfg, max_tokens),
        Aggregator(mode=routing.aggregation, fallback=_most_competent(router.prior)),
        options=RouteOptions().over(routing),
        answers=patterns, version=lambda: version,
        choose=stored_chooser(url, config.redis.namespace, by_id), chunk_size=chunk_size,
        progress=progress,
    )


def expert_runner(specs, pool_cfg, max_tokens: int):
    """A :class:`~routing.planner.PlanRunner` loading ``specs`` into one model pool sized by
    ``pool_cfg``, each generating at most ``max_tokens``."""
    from experts.engine import GenerationParams
    from experts.loader import ExpertLoader
    from experts.pool import ModelPool
    from routing.planner import PlanRunner, spec_preparer

    lookup = {spec.id: spec for spec in specs}.__getitem__
    loader = ExpertLoader(lookup, engines=pool_cfg.engine_choice())
    return PlanRunner(ModelPool(loader, max_models=pool_cfg.max_resident_models),
                      spec_preparer(loader, lookup), GenerationParams(max_tokens=max_tokens),
                      max_batch_size=pool_cfg.max_batch_size)


def stored_chooser(url: str, namespace: str, by_id: dict):
    """The chooser of the aggregator choice stored in Redis; None when none is stored (or
    Redis cannot be read: one line says so)."""
    from functools import partial

    import redis

    from experts.redis_conn import connect, redact
    from routing.aggregate import AggregatorStore, choose_aggregator, spec_domain

    try:
        choice = AggregatorStore(connect(url), namespace=namespace).load()
    except (redis.RedisError, OSError) as err:
        click.echo(f"aggregator choice not read from {redact(url)} ({type(err).__name__}); "
                   "the most competent expert aggregates", err=True)
        return None
    if choice is None:
        return None
    return partial(choose_aggregator, choice=choice, domain_of=spec_domain(by_id.__getitem__),
                   is_live=by_id.__contains__)


def _specs(config) -> list:
    specs = config.start_specs()
    if not specs:
        fail("no experts: list some under `experts:` in --config or set `demo_pool: true`")
    return specs


def specs_version(specs) -> str:
    """A version for cache keys: changes whenever an expert is added, removed or edited."""
    blob = json.dumps(sorted(spec.model_dump_json() for spec in specs))
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _most_competent(prior: dict[str, float]) -> str | None:
    return max(prior, key=prior.get) if prior else None
