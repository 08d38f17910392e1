"""Skills (Symbolic-MoE): the paper's faithful rule vs the smoothed variant, on shared data.

Seeded 80/20 domain-stratified split of the questions every model answered; profiles from
train only; top-1 accuracy on test (the chosen expert's score). Prints a table; ``--json
FILE`` writes the figures.

    .venv/bin/python bench/skills_variants.py ../shared/data/mmlu-pro [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    import numpy as np

    from routing.encoder import SentenceEncoder
    from routing.eval.split import stratified_split
    from routing.outcomes import load_outcomes
    from routing.strategies.skills import VARIANTS, SkillsStrategy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="Use the first N questions only.")
    parser.add_argument("--json", dest="json_path", help="Write the figures here.")
    args = parser.parse_args()

    table = load_outcomes(args.data_dir)
    table = table.subset(table.complete_rows()[: args.limit or None])
    train_rows, test_rows = stratified_split(table.domains, 0.2, args.seed)
    train, test = table.subset(train_rows), table.subset(test_rows)
    encoder = SentenceEncoder()
    started = time.perf_counter()
    emb_train, emb_test = encoder.encode(train.texts), encoder.encode(test.texts)
    figures = {"questions": len(table), "embed_s": round(time.perf_counter() - started, 1)}
    best = int(np.nanmean(train.scores, axis=0).argmax())
    figures["best_single"] = float(test.scores[:, best].mean())
    for variant in VARIANTS:
        strategy = SkillsStrategy(encoder, variant=variant)
        started = time.perf_counter()
        strategy.fit(train, emb_train)
        fit_s = time.perf_counter() - started
        values = strategy.score(test.texts, emb_test).values
        # No matched skill: fall back to the best single model, as the selector does.
        values = np.where(np.isnan(values).all(axis=1, keepdims=True),
                          np.nanmean(train.scores, axis=0), values)
        picks = np.nan_to_num(values, nan=-np.inf).argmax(axis=1)
        top1 = float(test.scores[np.arange(len(test)), picks].mean())
        figures[variant] = {"top1": round(top1, 4), "fit_s": round(fit_s, 1),
                            "skills": len(strategy.skills)}
    print(f"{'rule':<12}{'top-1':>8}{'fit s':>8}{'skills':>8}")
    print(f"{'best single':<12}{figures['best_single']:>8.3f}")
    for variant in VARIANTS:
        row = figures[variant]
        print(f"{variant:<12}{row['top1']:>8.3f}{row['fit_s']:>8.1f}{row['skills']:>8}")
    print("(the first fit also embeds the phrase vocabulary; later fits read it from the cache)")
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
