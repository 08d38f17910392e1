"""The replay demo (``conclave demo --replay``, and its short form at the end of ``conclave
demo``): the MMLU-Pro open-weight pool as replay experts (``configs/replay-mmlu-pro.yaml``),
served locally, asked held-out test questions over HTTP with the stock ``openai`` client.

The answers are real models' recorded answers, replayed (``engine: replay``): no model runs.
What is live is everything else: routing, batching, aggregation, serving. The table shows
what routing is worth: Conclave's routed panel against the best single expert asked
directly and the best expert per domain, both chosen on the train split.

:func:`replay_config` and :func:`held_out` are shared with ``bench/replay.py``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import yaml

from cluster.config import ConclaveConfig, ConfigError, parse_config

REPO = Path(__file__).resolve().parents[2]
REPLAY_CONFIG = REPO / "configs" / "replay-mmlu-pro.yaml"
DATA_PREFIX = "../shared/data"  # how the config spells the data root (from the repo root)
DATA_ENV = "CONCLAVE_SHARED_DATA"
SHORT_TRAIN = 200  # train questions the short demo's router is fitted on (embedded at start)
SYSTEM = "Answer the multiple-choice question. Options:\n{options}\nEnd with 'The answer is (X)'."


def find_data(explicit: str | None = None) -> Path | None:
    """The shared data root (holding ``mmlu-pro/``): ``explicit``, else $CONCLAVE_SHARED_DATA,
    else ``../shared/data`` next to the repo; None when it holds no MMLU-Pro predictions."""
    root = Path(explicit or os.environ.get(DATA_ENV) or REPO.parent / "shared" / "data")
    return root.resolve() if (root / "mmlu-pro" / "predictions.csv").is_file() else None


def replay_config(data_root: Path, outcomes: Path | None = None, cache: bool | None = None,
                  latency_scale: float | None = None,
                  namespace: str | None = None) -> ConclaveConfig:
    """``configs/replay-mmlu-pro.yaml`` with its data paths under ``data_root`` (so it runs
    from any directory), in a Redis namespace of its own per data root. ``outcomes``: fit
    the router on that folder (all of it) instead; ``cache``: pattern cache on or off;
    ``latency_scale``: turn the latency model on with that ``time_scale``; ``namespace``:
    this Redis namespace instead."""
    raw = _rebase(yaml.safe_load(REPLAY_CONFIG.read_text()), str(data_root))
    digest = hashlib.sha1(str(data_root).encode()).hexdigest()[:8]
    raw["redis"]["namespace"] = namespace or f"{raw['redis']['namespace']}-{digest}"
    if outcomes is not None:
        raw["routing"]["outcomes"] = str(outcomes)
        raw["routing"]["outcomes_subset"]["split"] = "all"
        raw["serving"]["allowed_model_roots"].append(str(outcomes))
    if cache is not None:
        raw["routing"].setdefault("cache", {})["enabled"] = cache
    for spec in raw["experts"]:
        if latency_scale is not None:
            spec["replay"].update(latency=True, time_scale=latency_scale)
    return parse_config(raw)


def _rebase(value, root: str):
    if isinstance(value, dict):
        return {k: _rebase(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, root) for v in value]
    if isinstance(value, str) and value.startswith(DATA_PREFIX):
        return root + value[len(DATA_PREFIX):]
    return value


@dataclass
class HeldOut:
    """The eval's split of MMLU-Pro for the open pool; ``train``/``test`` are OutcomeTables
    whose columns are model names, ``ids`` maps them to expert ids."""

    data: Path
    train: object
    test: object
    options: dict[str, list[str]]  # question id -> its options
    ids: dict[str, str]  # model name -> expert id


def held_out(config: ConclaveConfig, seed: int = 0) -> HeldOut:
    """The train/test split ``conclave eval --pool open --seed`` scores."""
    from routing.eval.run import load_eval_table
    from routing.eval.split import make_split
    from routing.outcomes import read_questions

    data = Path(config.experts[0].replay.data)
    table = load_eval_table(data, "open")
    train_rows, test_rows = make_split(data, table, seed=seed)
    ids = {spec.replay.model: spec.id for spec in config.experts if spec.replay}
    if set(table.experts) != set(ids):
        raise ConfigError(f"the replay config's experts are not the open pool: {sorted(ids)}")
    options = {qid: row.get("options") or [] for qid, row in
               read_questions(data / "questions.jsonl").items()}
    return HeldOut(data, table.subset(train_rows), table.subset(test_rows), options, ids)


def messages(question: str, options: list[str]) -> list[dict]:
    """The chat a client sends: the options in the system message, the question as the
    user message (what the router sees, as the offline evaluator does)."""
    lettered = "\n".join(f"({chr(65 + i)}) {text}" for i, text in enumerate(options))
    return [{"role": "system", "content": SYSTEM.format(options=lettered)},
            {"role": "user", "content": question}]


@dataclass
class Reply:
    letter: str | None
    experts: list[str]
    ms: float
    error: str | None = None
    cache: str = ""  # the pattern cache's answer: hit, miss, off or direct


def ask_all(url: str, model_of, held: HeldOut, rows: list[int], concurrency: int = 16,
            body: dict | None = None) -> list[Reply]:
    """Ask every test question ``rows[i]`` as ``model_of(row)`` over HTTP (openai client)."""
    import openai

    from routing.scoring import extract_choice

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    test = held.test

    def one(row: int) -> Reply:
        started = time.perf_counter()
        try:
            resp = client.chat.completions.create(
                model=model_of(row), max_tokens=32, extra_body={"conclave": body} if body else None,
                messages=messages(test.texts[row], held.options.get(test.ids[row], [])))
        except openai.OpenAIError as err:
            return Reply(None, [], (time.perf_counter() - started) * 1000, str(err)[:200])
        info = resp.model_extra["conclave"]
        return Reply(extract_choice(resp.choices[0].message.content or ""),
                     [e["id"] for e in info["experts"]], (time.perf_counter() - started) * 1000,
                     cache=info["cache"])

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, rows))


def best_choices(held: HeldOut) -> tuple[str, dict[str, str]]:
    """The best single expert and the best expert per domain, chosen on train (ids)."""
    from routing.eval.reference import expert_means

    names = held.train.experts
    best = held.ids[names[int(np.argmax(expert_means(held.train)))]]
    labels = np.asarray(held.train.domains, dtype=object)
    per_domain = {
        d: held.ids[names[int(np.argmax(expert_means(held.train.subset(
            np.flatnonzero(labels == d)))))]]
        for d in sorted(set(held.train.domains))}
    return best, per_domain


def accuracy(held: HeldOut, rows: list[int], replies: list[Reply]) -> np.ndarray:
    """1.0 where the reply's letter is the question's gold answer."""
    gold = held.test.answers
    return np.array([float(r.letter is not None and r.letter == gold[i])
                     for i, r in zip(rows, replies, strict=True)])


def k_auto_exists() -> bool:
    """Whether this tree's routing options accept ``k=auto``."""
    from routing.options import RouteOptions

    try:
        RouteOptions.parse_model_string("conclave:k=auto")
    except (ValueError, TypeError):
        return False
    return True


def run_modes(url: str, held: HeldOut, rows: list[int], concurrency: int = 16) -> dict:
    """Every table row: name -> (replies, hits)."""
    best, per_domain = best_choices(held)
    domains = held.test.domains
    modes = {"Conclave k=1": ("conclave:k=1", None),
             "Conclave k=3, vote": ("conclave:k=3", {"aggregation": "vote"})}
    if k_auto_exists():
        modes["Conclave k=auto, vote"] = ("conclave:k=auto", {"aggregation": "vote"})
    results = {}
    for name, (model, body) in modes.items():
        replies = ask_all(url, lambda _row, m=model: m, held, rows, concurrency, body)
        results[name] = (replies, accuracy(held, rows, replies))
    replies = ask_all(url, lambda _row: best, held, rows, concurrency)
    results[f"best single ({best})"] = (replies, accuracy(held, rows, replies))
    replies = ask_all(url, lambda row: per_domain[domains[row]], held, rows, concurrency)
    results["best per domain"] = (replies, accuracy(held, rows, replies))
    return results


def print_table(results: dict, n: int) -> None:
    click.echo(f"\n{n} held-out MMLU-Pro test questions; answers are REPLAYED from the models' "
               "recorded answers (predictions.csv), routing and serving are live.")
    click.echo(f"{'ROW':<44} {'ACCURACY':>8} {'EXPERTS/Q':>9} {'P50 MS':>7} {'P99 MS':>7} "
               f"{'ERRORS':>6}")
    for name, (replies, hits) in results.items():
        ms = np.array([r.ms for r in replies])
        used = np.mean([len(r.experts) for r in replies])
        errors = sum(r.error is not None for r in replies)
        click.echo(f"{name:<44} {hits.mean():>8.3f} {used:>9.2f} {np.percentile(ms, 50):>7.0f} "
                   f"{np.percentile(ms, 99):>7.0f} {errors:>6}")


def plot(results: dict, held: HeldOut, rows: list[int], path: Path) -> Path:
    """Per-domain accuracy of every row (``routing.eval.plots.per_domain_accuracy``)."""
    from routing.eval.metrics import per_domain
    from routing.eval.plots import per_domain_accuracy

    domains = [held.test.domains[i] for i in rows]
    table = {"strategies": {name: {"per_domain": per_domain(hits, domains)}
                            for name, (_, hits) in results.items()}}
    return per_domain_accuracy(table, path)


def sample_rows(held: HeldOut, n: int, seed: int = 0) -> list[int]:
    """``n`` test questions, spread over the domains (a seeded stratified sample)."""
    from routing.eval.split import stratified_split

    if n >= len(held.test):
        return list(range(len(held.test)))
    _, rows = stratified_split(held.test.domains, n / len(held.test), seed)
    return [int(i) for i in rows]


def train_sample(held: HeldOut, n: int, out: Path) -> Path:
    """A folder of ``n`` train questions (stratified) and their scores, for the short demo:
    a router fitted on a sample starts in seconds, where embedding all 8,000 train
    questions takes minutes on a cold cache."""
    import csv
    import json

    from routing.eval.split import stratified_split

    _, rows = stratified_split(held.train.domains, n / len(held.train), 1)
    out.mkdir(parents=True, exist_ok=True)
    train = held.train.subset(rows)
    with (out / "questions.jsonl").open("w") as handle:
        for qid, text, domain in zip(train.ids, train.texts, train.domains, strict=True):
            handle.write(json.dumps({"id": qid, "text": text, "domain": domain}) + "\n")
    with (out / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *train.experts])
        writer.writerows([qid, *(f"{v:g}" for v in row)]
                         for qid, row in zip(train.ids, train.scores, strict=True))
    (out / "models.json").write_text((held.data / "models.json").read_text())
    return out


def replay_section(data_root: Path, questions: int, port: int, short: bool,
                   plot_path: Path) -> None:
    """Serve the replay config, ask ``questions`` test questions in every mode, print the
    table and write the plot. ``short``: the router is fitted on a
    :data:`SHORT_TRAIN`-question train sample (see :func:`train_sample`), next to whatever
    else runs on ``port``."""
    from cluster.deploy.local import start_app, stop_app

    config = replay_config(data_root)
    held = held_out(config)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="conclave-replay-") as tmp:
        if short:
            config = replay_config(data_root, outcomes=train_sample(held, SHORT_TRAIN, Path(tmp)))
        sample = f"a {SHORT_TRAIN}-question sample of " if short else ""
        click.echo(f"\nreplay: serving {len(config.experts)} replay experts (MMLU-Pro open pool), "
                   f"router fitted on {sample}the train split…")
        url = start_app(config, port=port, name="replay", route_prefix="/replay")
        try:
            click.echo(f"replay: up in {time.perf_counter() - started:.0f}s at {url}")
            rows = sample_rows(held, questions)
            results = run_modes(url, held, rows)
        finally:
            stop_app("replay", shutdown=False)
    print_table(results, len(rows))
    if short:
        click.echo("(short: a small sample, so the figures are noisy; `conclave demo --replay` "
                   "asks 300 questions with the router fitted on the whole train split)")
    click.echo(f"per-domain accuracy plot: {plot(results, held, rows, plot_path)}")
    click.echo(f"replay: {time.perf_counter() - started:.0f}s in all")
