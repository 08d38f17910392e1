"""What ``bench/vs_vllm.py`` serves and asks: a random-weight Llama base (about 100M
parameters, or the tiny demo size) with 8 random LoRA adapters, built offline and cached,
and a fixed list of requests spread over the adapters; or (``real``) the real model,
SmolLM2-135M-Instruct, with the committed skill adapters and held-out skill questions.

The random adapters stand for 8 MMLU-Pro domains (/work/shared/data/mmlu-pro): each expert gets a
few of its domain's questions as examples (what Conclave's router matches on), and the
requests are other questions of the same domains, so ``conclave:k=1`` routing has a right
answer to find and asking an adapter directly sends the same question to the same adapter.
The real bundle is the real pool (:func:`experts.real_pool.build_real_pool`, every skill
expert registered): each adapter's examples are training questions of its skill, and the
requests are held-out items of every skill (:func:`experts.skills.mixed_stream`), each paired
with its own skill's adapter.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DOMAINS = ("math", "physics", "chemistry", "law", "economics", "health", "history",
           "computer science")
SIZES = {  # hidden 768 x 12 layers: ~113M parameters; head_dim 64 (vLLM's CPU attention
    # needs >= 32)
    "small": {"hidden_size": 768, "layers": 12, "heads": 12},
    "tiny": {"hidden_size": 64, "layers": 2, "heads": 2},  # the demo pool's size
}
LORA_RANK = 8
EXAMPLES_PER_EXPERT = 8
TOKENIZER_PER_DOMAIN = 60  # questions per domain the tokenizer is trained on (fixed: cached)
PROMPT_CHARS = 240  # the bases' context is 512 tokens of a 512-word BPE vocabulary
MMLU = Path(os.environ.get("CONCLAVE_SHARED_DATA", "/work/shared/data")) / "mmlu-pro"


@dataclass(frozen=True)
class Adapter:
    name: str  # the adapter's / expert's id
    path: Path
    domain: str
    examples: tuple[str, ...]
    description: str = ""  # what the router reads besides the examples


@dataclass(frozen=True)
class Bundle:
    """One base model, its adapters and the requests (text, adapter name) to send."""

    size: str
    base: Path
    adapters: tuple[Adapter, ...]
    requests: tuple[tuple[str, str], ...]


def expert_id(domain: str) -> str:
    return "lora-" + domain.replace(" ", "-")


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "conclave" / \
        "bench-vs-vllm"


def domain_questions(per_domain: int) -> dict[str, list[str]]:
    """The first ``per_domain`` questions of each domain, cut to ``PROMPT_CHARS``."""
    out: dict[str, list[str]] = {d: [] for d in DOMAINS}
    with open(MMLU / "questions.jsonl") as lines:
        for line in lines:
            row = json.loads(line)
            bucket = out.get(row["domain"])
            if bucket is not None and len(bucket) < per_domain:
                bucket.append(" ".join(row["text"].split())[:PROMPT_CHARS])
    short = [d for d, texts in out.items() if len(texts) < per_domain]
    if short:
        raise SystemExit(f"mmlu-pro has too few questions for {short} under {MMLU}")
    return out


def interleave(per_domain: dict[str, list[str]], n: int) -> tuple[tuple[str, str], ...]:
    """``n`` (question, adapter) pairs, the domains taking turns."""
    rows = []
    for i in range(n):
        domain = DOMAINS[i % len(DOMAINS)]
        rows.append((per_domain[domain][i // len(DOMAINS)], expert_id(domain)))
    return tuple(rows)


def build_bundle(size: str, requests: int, root: Path | None = None) -> Bundle:
    """Build (once; later calls reuse the folders) the base of ``size`` and 8 adapters."""
    from experts.tiny import add_random_lora, build_tiny_lm

    root = (root or cache_root()) / size
    per = -(-requests // len(DOMAINS))
    texts = domain_questions(EXAMPLES_PER_EXPERT + max(per, TOKENIZER_PER_DOMAIN))
    examples = {d: t[:EXAMPLES_PER_EXPERT] for d, t in texts.items()}
    asked = {d: t[EXAMPLES_PER_EXPERT:] for d, t in texts.items()}
    base = root / "base"
    if not (base / "config.json").exists():
        corpus = [t for d in DOMAINS for t in texts[d][:TOKENIZER_PER_DOMAIN]]
        build_tiny_lm(base, corpus, **SIZES[size], seed=0)
    adapters = []
    for seed, domain in enumerate(DOMAINS, start=1):
        path = root / expert_id(domain)
        if not (path / "adapter_config.json").exists():
            add_random_lora(base, path, seed=seed, rank=LORA_RANK)
        adapters.append(Adapter(expert_id(domain), path, domain, tuple(examples[domain])))
    return Bundle(size, base, tuple(adapters), interleave(asked, requests))


def build_real_bundle(requests: int) -> Bundle:
    """The real model and its skill adapters (prepared and copied into the cache dir once,
    as the demo does), and ``requests`` held-out skill questions, the skills mixed."""
    from experts.real_pool import build_real_pool
    from experts.skills import SKILLS, mixed_stream

    base, *skills = build_real_pool(live=True)
    adapters = tuple(Adapter(s.id, Path(s.adapter), s.domain, tuple(s.examples),
                             s.description) for s in skills)
    items = mixed_stream(-(-requests // len(SKILLS)))[:requests]
    return Bundle("real", Path(base.model), adapters,
                  tuple((item.question, item.skill) for item in items))
