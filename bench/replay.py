"""Replay benchmark: the whole MMLU-Pro test split served through Conclave with the open pool
as replay experts (``configs/replay-mmlu-pro.yaml``), against the offline evaluator.

1. Offline: the config's strategy with the options the served router builds it with, fitted
   on the train split and scored on the test split, as ``conclave eval`` does
   (``routing.eval.run.strategy_row``): ``offline_accuracy`` (top-1) and its top-1 expert
   per question. ``best_single_accuracy``: the best expert on train, scored on test.
2. Served: every test question sent over HTTP (stock ``openai`` client,
   ``conclave:k=1,guard=false``):
   ``served_accuracy`` (the letter of the reply against the gold answer), and
   ``decision_match``: the fraction of questions whose served expert is the offline one.
   Run once with the pattern cache on (the config's setting) and once with it off: a
   near-duplicate hit (cosine >= ``routing.cache.similarity``) reuses a neighbour's decision,
   which the offline evaluator never does.

    .venv/bin/python bench/replay.py [--data ROOT] [--limit N] [--json FILE]

Each run uses a Redis namespace of its own (deleted afterwards), so the cache starts empty.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import numpy as np


def offline(config, held) -> dict:
    """The offline evaluator's figures and top-1 expert id per test question."""
    from routing.encoder import build_encoder
    from routing.eval.reference import reference_rows
    from routing.eval.run import build, strategy_row

    encoder = build_encoder(config.encoder)
    name = config.routing.strategy  # with the options the served router gets
    strategy = build(name, config.routing.strategies.get(name, {}), encoder)
    strategy.fit(held.train, encoder.encode(held.train.texts))
    scores = strategy.score(held.test.texts, encoder.encode(held.test.texts))
    row = strategy_row(scores, held.test)
    values = np.asarray(scores.values, dtype=np.float64)
    best = np.argsort(-np.nan_to_num(values, nan=-np.inf), axis=1, kind="stable")[:, 0]
    return {"offline_accuracy": row["top1"],
            "best_single_accuracy": reference_rows(held.train, held.test)["best_single"],
            "choices": [held.ids[scores.experts[j]] for j in best]}


def served(config, held, rows: list[int], choices: list[str], concurrency: int,
           port: int) -> dict:
    """Serve ``config``, ask ``rows`` at k=1, compare with the offline ``choices``."""
    from cluster.cli.replay_demo import accuracy, ask_all
    from cluster.deploy.local import start_app, stop_app

    started = time.perf_counter()
    url = start_app(config, port=port, name="replay-bench", route_prefix="/")
    start_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        # guard off: the offline figure below is the strategy's own top-1 (conclave eval
        # reports the guarded one beside it)
        replies = ask_all(url, lambda _row: "conclave:k=1,guard=false", held, rows, concurrency)
        wall = time.perf_counter() - started
    finally:
        stop_app("replay-bench", shutdown=False)
        _drop_namespace(config)
    ms = np.array([r.ms for r in replies])
    same = [r.experts == [choices[i]] for i, r in zip(rows, replies, strict=True)]
    return {"served_accuracy": float(accuracy(held, rows, replies).mean()),
            "decision_match": float(np.mean(same)),
            "requests": len(replies), "errors": sum(r.error is not None for r in replies),
            "cache_hits": sum(r.cache == "hit" for r in replies),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "requests_per_s": len(replies) / wall, "start_s": start_s}


def _drop_namespace(config) -> None:
    from experts.redis_conn import connect, resolve_url

    client = connect(resolve_url(config.redis.url))
    for key in client.scan_iter(match=f"{config.redis.namespace}:*", count=1000):
        client.delete(key)


@click.command()
@click.option("--data", "data_dir", default=None, help="Shared data root (holding mmlu-pro/).")
@click.option("--limit", default=None, type=int, help="Only this many test questions.")
@click.option("--concurrency", default=32, show_default=True)
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write figures.")
def main(data_dir: str | None, limit: int | None, concurrency: int, json_path: str | None):
    import ray

    from cluster.cli.demo import _free_port
    from cluster.cli.replay_demo import find_data, held_out, replay_config, sample_rows
    from cluster.deploy.local import offline_defaults

    offline_defaults()
    root = find_data(data_dir)
    if root is None:
        raise click.ClickException("no MMLU-Pro predictions under the data root: pass --data")
    config = replay_config(root)
    held = held_out(config)
    rows = sample_rows(held, limit or len(held.test))
    reference = offline(config, held)
    figures = {k: v for k, v in reference.items() if k != "choices"}
    port = _free_port()  # Serve's proxy keeps the port it started on
    try:
        for label, cache in (("", True), ("cache_off_", False)):
            run = replay_config(root, cache=cache, namespace=f"replay-bench-{os.getpid()}-{label}")
            result = served(run, held, rows, reference["choices"], concurrency, port)
            figures.update({label + key: value for key, value in result.items()})
    finally:
        if ray.is_initialized():
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    figures["served_minus_best_single"] = (figures["served_accuracy"]
                                           - figures["best_single_accuracy"])
    click.echo(f"{'run':<10} {'served':>7} {'offline':>7} {'best1':>6} {'match':>6} "
               f"{'hits':>5} {'req':>5} {'err':>4} {'p50ms':>6} {'p99ms':>6} {'req/s':>6}")
    for label, name in (("", "cache on"), ("cache_off_", "cache off")):
        f = {k: figures[label + k] for k in ("served_accuracy", "decision_match", "cache_hits",
                                             "requests", "errors", "p50_ms", "p99_ms",
                                             "requests_per_s")}
        click.echo(f"{name:<10} {f['served_accuracy']:>7.3f} {figures['offline_accuracy']:>7.3f} "
                   f"{figures['best_single_accuracy']:>6.3f} {f['decision_match']:>6.3f} "
                   f"{f['cache_hits']:>5} {f['requests']:>5} {f['errors']:>4} "
                   f"{f['p50_ms']:>6.0f} {f['p99_ms']:>6.0f} {f['requests_per_s']:>6.1f}")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
