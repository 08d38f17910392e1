"""Routing overhead: what a strategy adds on top of embedding the query.

1. 2,000 real questions (the test split of the outcome data) routed by each strategy fitted
   on the train split, in batches of 64 and one at a time: ms per query for the encoder
   alone and for encoder + strategy, and their ratio (goal <= 1.2x). Each batch is embedded
   once and scored by every strategy right after, so load drift cancels out.
2. Panel size: 10, 100 and 1,000 synthetic experts (random per-domain skill levels on real
   questions), scoring only: ms per query as the panel grows.

    .venv/bin/python bench/routing_overhead.py [--data DIR] [--json FILE]

Prints a table; ``--json FILE`` writes the figures, top-level ``overhead_ratio`` being the
largest batched ratio over the strategies (``overhead_ratio_strategy`` names it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmlu-pro"
STRATEGIES = ("knn", "pilots", "hybrid", "skills", "glider")


def timed(fn, texts: list[str], batch: int) -> float:
    """Seconds to run ``fn`` over ``texts`` in chunks of ``batch``."""
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        fn(texts[i : i + batch])
    return time.perf_counter() - start


def interleaved(encoder, strategies: dict, texts: list[str], batch: int) -> dict[str, float]:
    """Seconds spent per component over ``texts``: each batch is embedded once (timed) and
    then scored by every strategy (each timed) right after, so a load change on a shared
    machine hits the encoder and the strategies alike."""
    spent = dict.fromkeys(["encoder", *strategies], 0.0)
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        start = time.perf_counter()
        emb = encoder.encode(chunk)
        spent["encoder"] += time.perf_counter() - start
        for name, strategy in strategies.items():
            start = time.perf_counter()
            strategy.score(chunk, emb)
            spent[name] += time.perf_counter() - start
    return spent


def fitted(names, train, emb_train, encoder) -> dict:
    """Every strategy of ``names`` that builds and fits from outcomes alone."""
    from routing.eval.run import build

    out = {}
    for name in names:
        try:
            strategy = build(name, {"weights": {"knn": 0.5, "pilots": 0.5}} if name == "hybrid"
                             else {}, encoder)
            strategy.fit(train, emb_train)
        except Exception as err:  # noqa: BLE001 - a bench reports what it could not run
            click.echo(f"skip {name}: {err}", err=True)
            continue
        out[name] = strategy
    return out


def real_overhead(data: Path, names, queries: int, single: int, fit: int) -> dict:
    """Encoder alone vs encoder + each strategy on real questions (section 1); strategies
    are fitted on ``fit`` train questions (embedded through the on-disk cache)."""
    from routing.encoder import SentenceEncoder
    from routing.eval.run import load_eval_table
    from routing.eval.split import stratified_split

    table = load_eval_table(data, None)
    train_rows, test_rows = stratified_split(table.domains, 0.2, 0)
    train = table.subset(train_rows[:fit])
    texts = [table.texts[i] for i in test_rows[:queries]]
    cached = SentenceEncoder()  # what strategies that embed more text (keywords) use, as live
    strategies = fitted(names, train, cached.encode(train.texts), cached)
    encoder = SentenceEncoder(cache=False)  # timed: every query really goes through the model
    encoder.encode(texts[:64])  # warm-up
    rows = {}
    for mode, batch, count in (("batched", 64, queries), ("single", 1, single)):
        spent = interleaved(encoder, strategies, texts[:count], batch)
        base = spent.pop("encoder")
        rows[f"encoder/{mode}"] = {"ms_per_query": 1e3 * base / count, "ratio": 1.0}
        for name, seconds in spent.items():
            rows[f"{name}/{mode}"] = {"ms_per_query": 1e3 * (base + seconds) / count,
                                      "ratio": (base + seconds) / base}
    return rows


def synthetic_table(experts: int, questions: int, seed: int = 0):
    """Real-looking embeddings (14 domain clusters) and 0/1 outcomes from per-domain skills."""
    from routing.outcomes import OutcomeTable

    rng = np.random.default_rng(seed)
    domains = rng.integers(0, 14, questions)
    centres = rng.standard_normal((14, 384)).astype(np.float32)
    emb = centres[domains] + 0.8 * rng.standard_normal((questions, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    skill = rng.uniform(0.1, 0.9, (14, experts))
    scores = (rng.random((questions, experts)) < skill[domains]).astype(np.float32)
    table = OutcomeTable(
        ids=[f"s{i}" for i in range(questions)], texts=[f"synthetic question {i}" for i in
                                                       range(questions)],
        domains=[f"d{d}" for d in domains], experts=[f"x{j}" for j in range(experts)],
        scores=scores,
    )
    return table, emb


def panel_growth(sizes: list[int], questions: int = 2000) -> dict:
    """ms per query (batches of 64, scoring only) for knn and pilots as the panel grows."""
    from routing.strategies import make_strategy

    out: dict[str, dict] = {}
    queries, q_emb = synthetic_table(1, 640, seed=1)
    for size in sizes:
        table, emb = synthetic_table(size, questions)
        for name in ("knn", "pilots"):
            strategy = make_strategy(name)
            strategy.fit(table, emb)
            seconds = timed(lambda t, s=strategy: s.score(t, q_emb[: len(t)]), queries.texts, 64)
            out.setdefault(name, {})[str(size)] = 1e3 * seconds / len(queries)
    return out


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=str(DATA))
@click.option("--queries", default=2000, show_default=True, help="Real questions routed.")
@click.option("--single", default=500, show_default=True,
              help="Of those, how many are also routed one at a time.")
@click.option("--strategy", "names", multiple=True, help="Strategies (default: all).")
@click.option("--fit", default=4000, show_default=True, help="Train questions fitted on.")
@click.option("--json", "json_path", default=None, help="Write the figures here.")
def main(data: str, names: tuple[str, ...], queries: int, single: int, fit: int,
         json_path: str | None) -> None:
    """Measure routing overhead against the encoder, and its growth with the panel."""
    real = real_overhead(Path(data), names or STRATEGIES, queries, single, fit)
    growth = panel_growth([10, 100, 1000])
    click.echo(f"{'strategy/mode':22s} {'ms/query':>9s} {'x encoder':>10s}")
    for name, row in real.items():
        click.echo(f"{name:22s} {row['ms_per_query']:9.2f} {row['ratio']:10.2f}")
    click.echo(f"\n{'panel size':22s} " + " ".join(f"{s:>8s}" for s in ("10", "100", "1000")))
    for name, row in growth.items():
        click.echo(f"{name + ' ms/query':22s} " + " ".join(f"{v:8.3f}" for v in row.values()))
    batched = {k.split("/")[0]: v["ratio"] for k, v in real.items()
               if k.endswith("/batched") and not k.startswith("encoder")}
    worst = max(batched, key=batched.get)
    if json_path:
        Path(json_path).write_text(json.dumps({
            "overhead_ratio": batched[worst], "overhead_ratio_strategy": worst,
            "overhead_ratio_by_strategy": batched, "real": real, "panel_growth_ms": growth,
            "queries": queries, "single_queries": single, "fit_questions": fit}, indent=1))


if __name__ == "__main__":
    main()
