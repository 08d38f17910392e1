"""The offline demo pool: tiny untrained LMs and LoRA adapters with plausible expert specs.

Two tiny base LMs (``general-base``, ``code-base``) and four LoRA experts on
``general-base`` (math, medicine, law, science), built deterministically under
``cache_dir()/demo`` (skipped when already there). The models are random: their answers are
noise, but loading, LoRA batching, routing and serving run exactly as with real models.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from experts import demo_questions as q
from experts.engine import GenerationParams
from experts.redis_conn import cache_dir
from experts.spec import ExpertSpec

VERSION = "v2"  # bump when the build changes, so old caches are not reused
BASES = {
    # name: (profile, build options)
    "general-base": (q.GENERAL, {"hidden_size": 64, "layers": 2, "seed": 11}),
    "code-base": (q.CODE, {"hidden_size": 96, "layers": 2, "seed": 12}),
}
ADAPTERS = {
    # name: (profile, base, seed)
    "math": (q.MATH, "general-base", 21),
    "medicine": (q.MEDICINE, "general-base", 22),
    "law": (q.LAW, "general-base", 23),
    "science": (q.SCIENCE, "general-base", 24),
}
PROFILES = [q.GENERAL, q.CODE, q.MATH, q.MEDICINE, q.LAW, q.SCIENCE]


def demo_root(root: str | Path | None = None) -> Path:
    """Where the demo pool lives (``root`` or ``cache_dir()/demo``), per build version."""
    return Path(root or cache_dir() / "demo") / VERSION


def build_demo_pool(root: str | Path | None = None) -> list[ExpertSpec]:
    """Build (once) and return the demo experts' specs: bases first, then LoRA experts."""
    from experts.tiny import add_random_lora, build_tiny_lm

    folder = demo_root(root)
    texts = tokenizer_texts()
    specs = []
    for name, (profile, options) in BASES.items():
        path = build_once(
            folder / name, lambda p, o=options: build_tiny_lm(p, texts, init_std=0.2, **o)
        )
        specs.append(_spec(name, profile, model=str(path)))
    for name, (profile, base, seed) in ADAPTERS.items():
        base_path = folder / base
        path = build_once(
            folder / "adapters" / name,
            lambda p, b=base_path, s=seed: add_random_lora(b, p, seed=s, scale=0.3),
        )
        specs.append(_spec(name, profile, kind="lora", base=base, adapter=str(path)))
    return specs


def tokenizer_texts() -> list[str]:
    """What the demo tokenizers learn from: every example question plus a short corpus."""
    return [text for profile in PROFILES for text in profile["examples"]] + q.CORPUS


def _spec(expert_id: str, profile: dict, **fields) -> ExpertSpec:
    return ExpertSpec(
        id=expert_id,
        generation=GenerationParams(max_tokens=24),
        **profile,
        **fields,
    )


def build_once(path: Path, build) -> Path:
    """Run ``build(tmp)`` unless ``path`` exists, then move the result into place, so a
    crash or a concurrent builder never leaves a half-built model behind."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        os.rename(tmp, path)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return path
