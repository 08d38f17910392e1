"""Variants of the learned (contrastive) router on one outcome data set, side by side with
kNN: top-1 (micro and macro), top-3 + vote, the adaptive panel (k=auto), training time.

Same table, split and seed as ``conclave eval``; every variant is trained on train only (its
early stopping on a held-out part of train) and scored on test. ``--holdout-domains``
instead trains on the other domains and tests on the named ones (unseen domains).

    .venv/bin/python bench/router_variants.py ../shared/data/mmlu-pro --pool open \\
        --variant default --variant no-sample --json variants.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

VARIANTS = {
    "default": {},
    "no-sample-loss": {"sample_weight": 0.0},
    "no-calibration-loss": {"calibration_weight": 0.0},
    "pure-calibration": {"sample_weight": 0.0, "top_k": 0},
    "tau-0.05": {"temperature": 0.05},
    "top5-bottom10": {"top_k": 5, "bottom_k": 10},
    "wide": {"hidden": 1024, "dropout": 0.2},
    "regularised": {"hidden": 256, "dropout": 0.3, "weight_decay": 1e-2},
    "slow": {"lr": 3e-4, "patience": 8},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--pool", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=None,
                        help=f"Repeatable; default: all of {', '.join(VARIANTS)}.")
    parser.add_argument("--knn-mix", type=float, action="append", default=None,
                        help="Also score (1-w)·contrastive + w·knn for these w (repeatable).")
    parser.add_argument("--holdout-domains", default=None,
                        help="Comma-separated domains: test on them, train on the others.")
    parser.add_argument("--add-expert", default=None,
                        help="Also: train without this expert, then time add_expert for it.")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def load(args):
    from routing.encoder import SentenceEncoder
    from routing.eval.run import load_eval_table
    from routing.eval.split import make_split

    table = load_eval_table(args.data_dir, args.pool)
    encoder = SentenceEncoder()
    embeddings = encoder.encode(table.texts)
    if args.holdout_domains:
        held = {d.strip() for d in args.holdout_domains.split(",")}
        unknown = held - set(table.domains)
        if unknown:
            raise SystemExit(f"unknown domain(s) {sorted(unknown)}; known: {sorted(set(table.domains))}")
        test_rows = np.array([i for i, d in enumerate(table.domains) if d in held])
        train_rows = np.array([i for i, d in enumerate(table.domains) if d not in held])
    else:
        train_rows, test_rows = make_split(args.data_dir, table, seed=args.seed)
    return table, embeddings, train_rows, test_rows, encoder


def row(name, strategy, train, test, train_emb, test_emb, seconds, mix=None) -> dict:
    from routing.eval.run import auto_row, strategy_row

    scored, train_scored = strategy.score(test.texts, test_emb), strategy.score(train.texts, train_emb)
    if mix is not None:
        weight, knn = mix
        scored = _blend(scored, knn.score(test.texts, test_emb), weight)
        train_scored = _blend(train_scored, knn.score(train.texts, train_emb), weight)
    result = strategy_row(scored, test)
    result["auto"] = auto_row(train_scored, train, scored, test)
    out = {"variant": name, "top1": result["top1"], "top1_macro": result["top1_macro"],
           "top3_vote": result["top3_vote"], "top3_any": result["top3_any"],
           "auto": {k: result["auto"][k] for k in ("accuracy", "mean_experts", "curve")},
           "seconds": round(seconds, 1)}
    log = getattr(strategy, "train_log", None)
    if log is not None:
        out.update(best_step=log.best_step, holdout=round(log.best_holdout, 4))
    return out


def added(expert, train, test, tr, te, encoder) -> dict:
    """Train on every expert but ``expert``, then add it (its train column only) and time it."""
    from routing.strategies import StrategyContext, make_strategy

    others = [e for e in train.experts if e != expert]
    strategy = make_strategy("contrastive", context=StrategyContext(encoder))
    strategy.fit(train.with_experts(others), tr)
    before = strategy.score(test.texts, te).values
    started = time.perf_counter()
    strategy.add_expert(expert, train.with_experts([expert]), tr)
    seconds = time.perf_counter() - started
    out = row(f"add_expert {expert}", strategy, train, test, tr, te, seconds)
    after = strategy.score(test.texts, te).values[:, : len(others)]
    out["others_unchanged"] = bool(np.array_equal(before, after))
    out["add_expert_seconds"] = round(seconds, 2)
    return out


def _blend(a, b, weight):
    from routing.strategies.base import Scores

    columns = [b.experts.index(e) for e in a.experts]
    values = (1 - weight) * a.values + weight * np.asarray(b.values)[:, columns]
    return Scores(experts=a.experts, values=values, explanations=a.explanations)


def main(argv=None) -> None:
    from routing.strategies import StrategyContext, make_strategy

    args = parse_args(argv)
    table, embeddings, train_rows, test_rows, encoder = load(args)
    train, test = table.subset(train_rows), table.subset(test_rows)
    tr, te = embeddings[train_rows], embeddings[test_rows]
    started = time.perf_counter()
    knn = make_strategy("knn", {"k": 100, "temperature": 0.2})
    knn.fit(train, tr)
    results = [row("knn (k=100, T=0.2)", knn, train, test, tr, te, time.perf_counter() - started)]
    print(json.dumps(results[-1]), flush=True)
    for name in args.variant or list(VARIANTS):
        started = time.perf_counter()
        strategy = make_strategy("contrastive", VARIANTS[name], StrategyContext(encoder))
        strategy.fit(train, tr)
        seconds = time.perf_counter() - started
        results.append(row(name, strategy, train, test, tr, te, seconds))
        print(json.dumps(results[-1]), flush=True)
        for weight in args.knn_mix or []:
            results.append(row(f"{name} + knn·{weight}", strategy, train, test, tr, te, seconds,
                               mix=(weight, knn)))
            print(json.dumps(results[-1]), flush=True)
    if args.add_expert:
        results.append(added(args.add_expert, train, test, tr, te, encoder))
        print(json.dumps(results[-1]), flush=True)
    refs = __import__("routing.eval.reference", fromlist=["x"]).reference_rows(train, test)
    print(f"{'variant':34s} {'top1':>6s} {'macro':>6s} {'vote3':>6s} {'auto':>6s} {'exp':>5s} {'s':>6s}")
    for r in results:
        print(f"{r['variant']:34s} {r['top1']:6.4f} {r['top1_macro']:6.4f} "
              f"{(r['top3_vote'] or float('nan')):6.4f} {r['auto']['accuracy']:6.4f} "
              f"{r['auto']['mean_experts']:5.2f} {r['seconds']:6.1f}")
    print("reference:", {k: None if v is None else round(v, 4) for k, v in refs.items()})
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results, "reference": refs,
                       "train": len(train), "test": len(test)}, handle, indent=1)


if __name__ == "__main__":
    main()
