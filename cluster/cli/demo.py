"""``conclave demo``: build the offline demo pool, register it, and let every expert answer.

One batch per base model: the LoRA experts on a base answer together in one mixed-adapter
batch. The models are tiny and untrained, so the answers are noise; the code path (registry,
loader, model pool, LoRA batching) is the real one.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import click

from cluster.cli import main
from cluster.cli.experts import config_option, open_registry, redis_option, run_guarded


@dataclass
class DemoRow:
    """One expert's answer, for the table."""

    expert: str
    kind: str
    base: str
    answer: str
    tokens: int
    seconds: float


@main.command()
@redis_option
@config_option
@click.option("--root", default=None, help="Build the demo pool here (default: cache dir).")
def demo(redis_url: str | None, config_path: str | None, root: str | None) -> None:
    """Build the demo experts, register them, and print one answer from each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # library deprecation chatter
        rows = run_guarded(lambda: run_demo(redis_url, config_path, root))
    click.echo(
        f"{'EXPERT':<14} {'KIND':<6} {'BASE':<14} {'ANSWER':<42} {'TOKENS':>6} {'SECONDS':>8}"
    )
    for row in rows:
        click.echo(
            f"{row.expert:<14} {row.kind:<6} {row.base:<14} {_snippet(row.answer, 42):<42} "
            f"{row.tokens:>6} {row.seconds:>8.2f}"
        )
    click.echo("(tiny untrained demo models: the answers are noise; the code path is real)")


def run_demo(redis_url: str | None, config_path: str | None, root: str | None) -> list[DemoRow]:
    """Build and register the demo pool, then generate one answer per expert."""
    import torch
    from transformers.utils import logging as hf_logging

    from experts.demo import build_demo_pool
    from experts.loader import ExpertLoader, engine_key
    from experts.pool import ModelPool

    # Tiny models: waking several CPU threads costs more than the matrix products.
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    specs = build_demo_pool(root)
    registry = open_registry(redis_url, config_path)
    registry.seed(specs)
    loader = ExpertLoader(registry.get)
    pool = ModelPool(loader, max_models=2)
    groups: dict[str, list] = {}
    for spec in specs:
        groups.setdefault(engine_key(spec), []).append(registry.get(spec.id))
    rows = []
    for key, members in groups.items():
        rows += _answer_group(pool, loader, key, members)
    pool.clear()
    return rows


def _answer_group(pool, loader, key: str, members: list) -> list[DemoRow]:
    """One mixed-adapter batch: each member answers its first example question."""
    from experts.engine import GenerationParams

    engine = pool.get(key)
    adapters = [loader.prepare(engine, spec) for spec in members]
    params = GenerationParams(max_new_tokens=max(s.generation.max_new_tokens for s in members))
    start = time.perf_counter()
    answers = engine.generate([spec.examples[0] for spec in members], params, adapters)
    seconds = time.perf_counter() - start
    return [
        DemoRow(spec.id, spec.kind, key, answer.text, answer.completion_tokens, seconds)
        for spec, answer in zip(members, answers, strict=True)
    ]


def _snippet(text: str, width: int) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip() or "(empty)"
    return text if len(text) <= width else text[: width - 1] + "…"
