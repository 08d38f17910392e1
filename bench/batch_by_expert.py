"""Batching by expert: 16 tiny experts, a budget of 4 resident models, 200 queries, k=3.

Two ways of running the expert stage (routing and aggregation excluded from both):

- naive:   per query, load each of its k experts, generate its answer, unload it;
- planner: :class:`routing.planner.BatchPlanner` groups the rows by expert and
  :class:`routing.planner.PlanRunner` runs one batched ``generate`` per expert on a
  :class:`experts.pool.ModelPool` of 4 resident models (each expert loaded once).

The experts are random Llama-architecture LMs of ~25M parameters (``experts.tiny``), built
once and kept under the cache dir. Decisions are NOT from the router: each query's k
distinct experts are drawn with a seed from a Zipf-skewed distribution over the 16 experts
(some experts are popular, a few rare), which is what a router produces on mixed traffic.

The script asserts that the planner's loads equal the number of distinct experts used.
By default the naive arm is timed on the first 30 queries only (``--naive-queries``; 0 for
all 200, ~10 min on 2 cores) and extrapolated per query; the output says so on its own line.

    .venv/bin/python bench/batch_by_expert.py --json batch_by_expert.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--budget", type=int, default=4, help="Resident models at most.")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of popularity.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="Rows per generate call in the planner arm (length-sorted).")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: no oversubscription on a shared box; "
                        "0: torch's choice).")
    parser.add_argument("--naive-queries", type=int, default=30,
                        help="Time the naive arm on the first N queries and extrapolate per "
                        "query (0: all; about 3 s per query on 2 shared cores).")
    parser.add_argument("--root", type=Path, default=None, help="Where the experts are built.")
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here.")
    args = parser.parse_args(argv)
    if not 1 <= args.k <= args.experts:
        parser.error("need 1 <= k <= experts")
    return args


def build_experts(args) -> dict[str, Path]:
    """``--experts`` model folders (built once; reused while the shape is the same)."""
    from experts.demo import tokenizer_texts
    from experts.redis_conn import cache_dir
    from experts.tiny import build_tiny_lm

    root = args.root or cache_dir() / "bench" / f"batch-by-expert-h{args.hidden}-l{args.layers}"
    paths = {}
    for i in range(args.experts):
        path = root / f"expert-{i:02d}"
        if not (path / "model.safetensors").exists():
            print(f"building {path} ...", flush=True)
            build_tiny_lm(path, tokenizer_texts(), hidden_size=args.hidden, layers=args.layers,
                          heads=8, seed=i)
        paths[f"expert-{i:02d}"] = path
    return paths


def draw_decisions(names: list[str], args) -> list[list[str]]:
    """k distinct experts per query, drawn from a Zipf(``skew``) popularity (seeded)."""
    rng = np.random.default_rng(args.seed)
    popularity = 1.0 / np.arange(1, len(names) + 1) ** args.skew
    popularity /= popularity.sum()
    return [list(rng.choice(names, size=args.k, replace=False, p=popularity))
            for _ in range(args.queries)]


def questions(n: int) -> list[list[dict]]:
    from experts.demo import tokenizer_texts

    texts = tokenizer_texts()
    return [[{"role": "user", "content": f"{texts[i % len(texts)]} (question {i})"}]
            for i in range(n)]


def run_planner(paths, decisions, prompts, params, budget: int, batch_size: int) -> dict:
    from experts.hf_engine import HFEngine
    from experts.pool import ModelPool
    from routing.planner import BatchPlanner, PlanRunner

    pool = ModelPool(lambda key: HFEngine(str(paths[key])), max_models=budget)
    start = time.perf_counter()
    plan = BatchPlanner(max_resident=budget).plan(decisions, resident=pool.resident())
    tasks = {task: prompts[task[0]] for step in plan.experts for task in step.tasks}
    runner = PlanRunner(pool, params=params, max_batch_size=batch_size)
    answers = runner.run(plan.experts, tasks)
    seconds = time.perf_counter() - start
    pool.clear()
    assert len(answers) == len(tasks)
    assert plan.loads == pool.stats.loads, (plan.loads, pool.stats.loads)
    return {"seconds": seconds, "loads": pool.stats.loads, "queries": len(decisions)}


def run_naive(paths, decisions, prompts, params) -> dict:
    from experts.hf_engine import HFEngine

    loads = 0
    start = time.perf_counter()
    for row, experts in enumerate(decisions):
        for name in experts:
            engine = HFEngine(str(paths[name]))
            loads += 1
            engine.generate([prompts[row]], params)
            engine.close()
    return {"seconds": time.perf_counter() - start, "loads": loads, "queries": len(decisions)}


def main(argv=None) -> dict:
    from experts.engine import GenerationParams
    from experts.hf_engine import HFEngine

    args = parse_args(argv)
    quiet_transformers()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    paths = build_experts(args)
    decisions = draw_decisions(sorted(paths), args)
    prompts = questions(args.queries)
    params = GenerationParams(max_tokens=args.max_tokens)
    distinct = len({name for row in decisions for name in row})
    warm = HFEngine(str(paths[sorted(paths)[0]]))  # first-call costs out of both arms
    warm.generate([prompts[0]], params)
    warm.close()
    planner = run_planner(paths, decisions, prompts, params, args.budget, args.batch_size)
    assert planner["loads"] == distinct, (planner["loads"], distinct)
    subset = args.naive_queries or args.queries
    naive = run_naive(paths, decisions[:subset], prompts, params)
    naive_total = naive["seconds"] * args.queries / naive["queries"]
    naive_loads = sum(len(row) for row in decisions)  # per query, each expert loaded
    figures = {
        "speedup": naive_total / planner["seconds"],
        "planner_loads": planner["loads"],
        "naive_loads": naive_loads,
        "distinct_experts": distinct,
        "planner_seconds": planner["seconds"],
        "naive_seconds": naive_total,
        "naive_measured_queries": naive["queries"],
        "naive_measured_seconds": naive["seconds"],
        "naive_extrapolated": naive["queries"] < args.queries,
        "decisions": f"seeded Zipf({args.skew}) over experts, k distinct per query",
        "setup": {key: (str(value) if isinstance(value, Path) else value)
                  for key, value in vars(args).items() if key != "json"},
    }
    print_table(figures, args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def quiet_transformers() -> None:
    """No per-load progress bars: the table is the output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def print_table(f: dict, args) -> None:
    print(f"{args.experts} experts (~{_params(args) / 1e6:.0f}M params each), budget "
          f"{args.budget} resident, {args.queries} queries, k={args.k}, "
          f"{args.max_tokens} new tokens; decisions: {f['decisions']}")
    print(f"{'arm':<8} {'loads':>6} {'wall s':>9} {'s/query':>8}")
    for arm, loads, seconds in (("naive", f["naive_loads"], f["naive_seconds"]),
                                ("planner", f["planner_loads"], f["planner_seconds"])):
        print(f"{arm:<8} {loads:>6} {seconds:>9.2f} {seconds / args.queries:>8.3f}")
    print(f"speedup  {f['speedup']:.1f}x   (planner loads == distinct experts used: "
          f"{f['planner_loads']} == {f['distinct_experts']})")
    if f["naive_extrapolated"]:
        print(f"NOTE: naive arm measured on the first {f['naive_measured_queries']} queries "
              f"({f['naive_measured_seconds']:.2f} s) and extrapolated per query to "
              f"{args.queries}.")


def _params(args) -> int:
    vocab = 512
    return vocab * args.hidden + args.layers * (4 * args.hidden**2 + 3 * args.hidden * 4
                                                * args.hidden)


if __name__ == "__main__":
    main()
