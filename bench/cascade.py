"""Cascade benchmark: ``k: cascade`` against k=1, k=3 with a vote and ``k: auto`` on a stream of
items (text + gold answer), served through Conclave from a pool config.

1. Serve CONFIG; for every item ask ``conclave:k=1``, ``conclave:k=3,aggregation=vote`` and
   ``conclave:k=auto`` (accuracy, experts per query from the response's ``conclave`` block).
2. The cascade's record: the item's ``k_max`` candidates (``/v1/route`` with ``k=cascade``),
   each asked directly with logprobs at temperature 0, its confidence as the cascade computes it
   (:func:`cluster.panel.cascade.confidence`) and its answer scored. Any threshold's cascade follows
   from it exactly (:func:`cluster.panel.cascade.outcome`: stop at the first sure answer, keep the
   most confident asked).
3. The threshold is tuned on a validation part of the items (``--validation``, seeded): the
   most accurate threshold whose mean experts per query stays within ``--budget``. Every figure
   is reported on the other part. ``--live`` also sends the tuned cascade to the server and
   reports its accuracy beside the replayed one.

    .venv/bin/python bench/cascade.py --config configs/demo.yaml --skills 40 [--json FILE]
    .venv/bin/python bench/cascade.py --config CONFIG.yaml --items ITEMS.jsonl [--json FILE]

Items: ``--skills N``: the real skill experts' mixed stream (:func:`experts.skills.mixed_stream`,
N held-out items per skill, exact match by :func:`experts.skills.is_correct`), the threshold
tuned on N train-split items per skill; or ``--items``: one ``{"text", "answer", "metric"?}``
per line (``metric`` as :func:`routing.scoring.score_answer` takes it), a seeded
``--validation`` share tuned on.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import numpy as np

NEVER = -1e9  # a threshold no answer falls below: the cascade never escalates
MODES = {"k=1": "conclave:k=1", "k=3 vote": "conclave:k=3,aggregation=vote",
         "k=auto": "conclave:k=auto,aggregation=vote"}


def ask(client, model: str, text: str, max_tokens: int, **extra) -> tuple[str, dict]:
    resp = client.chat.completions.create(model=model, max_tokens=max_tokens, temperature=0.0,
                                          messages=[{"role": "user", "content": text}], **extra)
    return resp.choices[0].message.content or "", resp


def score(item: dict, reply: str) -> float:
    """The reply's score: a skill item's exact match, else :func:`score_answer`."""
    if "skill" in item:
        from experts.skills import is_correct

        return float(is_correct(item["skill"], reply, item["answer"]))
    from routing.scoring import score_answer

    return score_answer(reply, item["answer"], item.get("metric", "auto"))


def load_items(items_path: str | None, skills: int | None, validation: float,
               seed: int) -> tuple[list[dict], list[dict]]:
    """(items to tune the threshold on, items to measure on)."""
    if skills:
        from experts.skills import mixed_stream

        def stream(split):
            return [{"text": i.question, "answer": i.answer, "skill": i.skill}
                    for i in mixed_stream(skills, seed, split)]
        return stream("train"), stream("test")
    if not items_path:
        raise click.UsageError("give --items FILE or --skills N")
    items = [json.loads(line) for line in Path(items_path).read_text().splitlines() if line]
    order = np.random.default_rng(seed).permutation(len(items))
    cut = int(round(len(items) * validation))
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]


def mode_row(client, model: str, items: list[dict], max_tokens: int, workers: int) -> dict:
    """Accuracy and experts per query of one routed mode, per item."""

    import openai

    def one(item):
        try:
            text, resp = ask(client, model, item["text"], max_tokens)
        except openai.APIError:  # a failed request is a wrong answer, and counted
            return 0.0, 0, 1
        return score(item, text), len(resp.model_extra["conclave"]["experts"]), 0

    with ThreadPoolExecutor(workers) as pool:
        hits, sizes, errors = zip(*pool.map(one, items), strict=True)
    return {"hits": list(hits), "experts": list(sizes), "errors": sum(errors)}


def cascade_record(client, http, items: list[dict], k_max: int, max_tokens: int,
                   workers: int) -> list[list[tuple[float, float]]]:
    """Per item: (confidence, score) of each cascade candidate, in the cascade's order."""
    from cluster.panel.cascade import confidence

    def one(item):
        decision = http.post("/v1/route", json={
            "query": item["text"], "model": f"conclave:k=cascade,k_max={k_max}"}).json()
        steps = []
        for expert in decision["decision"]["experts"]:
            text, resp = ask(client, expert, item["text"], max_tokens, logprobs=True)
            lps = [{"logprob": t.logprob} for t in resp.choices[0].logprobs.content]
            steps.append((confidence(lps), score(item, text)))
        return steps

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, items))


def replayed(record: list[list[tuple[float, float]]], threshold: float) -> tuple[float, float]:
    """(accuracy, mean experts asked) of the cascade at ``threshold`` on ``record``."""
    from cluster.panel.cascade import outcome

    results = [outcome([c for c, _ in steps], threshold) for steps in record]
    hits = [steps[kept][1] for steps, (_, kept) in zip(record, results, strict=True)]
    return float(np.mean(hits)), float(np.mean([asked for asked, _ in results]))


def tune_threshold(record, budget: float) -> float:
    """The most accurate threshold within ``budget`` experts per query (ties: fewer experts)."""
    firsts = sorted({steps[0][0] for steps in record if steps})
    candidates = [0.0, NEVER, *np.quantile(firsts, np.linspace(0, 1, 21)).tolist()]
    scored = [(t, *replayed(record, t)) for t in candidates]
    within = [s for s in scored if s[2] <= budget] or [min(scored, key=lambda s: s[2])]
    return max(within, key=lambda s: (s[1], -s[2]))[0]


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True))
@click.option("--items", "items_path", default=None, type=click.Path(exists=True))
@click.option("--skills", default=None, type=int, help="Items per skill (the skill stream).")
@click.option("--validation", default=0.3, show_default=True, help="--items: share tuned on.")
@click.option("--budget", default=1.5, show_default=True, help="Experts per query, at most.")
@click.option("--k-max", default=3, show_default=True, help="Most experts the cascade asks.")
@click.option("--max-tokens", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=4, show_default=True)
@click.option("--port", default=8431, show_default=True)
@click.option("--live/--no-live", default=False, help="Also send the tuned cascade.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False))
def main(config_path, items_path, skills, validation, budget, k_max, max_tokens, seed, workers,
         port, live, json_path):
    from cluster.config import load_config
    from cluster.deploy.local import start_app, stop_app

    tune_items, test_items = load_items(items_path, skills, validation, seed)
    url = start_app(load_config(config_path), port=port, name="cascade-bench", route_prefix="/")
    try:
        figures = measure(url, tune_items, test_items, budget, k_max, max_tokens, workers, live)
    finally:
        stop_app("cascade-bench", shutdown=False)
    result = {"figures": figures, "meta": {"config": config_path,
                                           "items": items_path or f"skills x {skills}",
                                           "tuned_on": len(tune_items), "test": len(test_items),
                                           "k_max": k_max, "budget": budget, "seed": seed}}
    click.echo(f"{'mode':10s} {'accuracy':>9s} {'experts/q':>10s}")
    for name, row in figures.items():
        click.echo(f"{name:10s} {row['accuracy']:9.4f} {row['experts_per_query']:10.2f}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))


def measure(url: str, tune_items, test_items, budget, k_max, max_tokens, workers,
            live: bool) -> dict:
    """Every mode's figures on ``test_items``, the cascade's threshold tuned on
    ``tune_items``."""
    import httpx
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    with httpx.Client(base_url=url, timeout=300) as http:
        threshold = tune_threshold(
            cascade_record(client, http, tune_items, k_max, max_tokens, workers), budget)
        record = cascade_record(client, http, test_items, k_max, max_tokens, workers)
    figures = {}
    for name, model in MODES.items():
        row = mode_row(client, model, test_items, max_tokens, workers)
        figures[name] = {"accuracy": float(np.mean(row["hits"])),
                         "experts_per_query": float(np.mean(row["experts"])),
                         "errors": row["errors"]}
    accuracy, experts = replayed(record, threshold)
    figures["cascade"] = {"accuracy": accuracy, "experts_per_query": experts,
                          "threshold": threshold}
    if live:
        model = f"conclave:k=cascade,k_max={k_max},threshold={threshold:.6f}"
        figures["cascade"]["live_accuracy"] = float(np.mean(
            mode_row(client, model, test_items, max_tokens, workers)["hits"]))
    return figures


if __name__ == "__main__":
    main()
