"""The real pool: SmolLM2-135M-Instruct and one LoRA skill expert per skill of
:mod:`experts.skills`, trained on it (``make adapters``) and committed under
``configs/adapters/``.

:func:`build_real_pool` prepares the model (once) and copies the adapters into the cache
dir beside it, so every path lies under the default ``serving.allowed_model_roots`` and
each node resolves the same paths. The specs carry descriptions and example questions, so
routing works without any outcome data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from experts.demo import build_once
from experts.engine import GenerationParams
from experts.real_model import HUB_ID, models_root, prepare_real_model
from experts.skills import SKILLS, skill_items
from experts.spec import ExpertSpec

BASE_ID = "smollm2"
ADAPTERS_ENV = "CONCLAVE_ADAPTERS"  # where the committed adapters are, outside a checkout
LIVE_SKILL = "isodate"  # the demo adds this one live; the others start registered
EXAMPLES_PER_SKILL = 6
BASE_EXAMPLES = [
    "What is the capital of France?", "Name the three primary colors.",
    "Write a Python function that reverses a string.", "Why is the sky blue?",
    "Give me a synonym for happy.", "What do bees make?", "Write a haiku about the sea.",
    "How do I cook rice?", "List three animals that live in the ocean.",
    "Summarize the plot of Romeo and Juliet.", "What is 15 plus 27?",
    "Explain what a noun is.",
]


def adapter_source(skill: str) -> Path:
    """The committed adapter of ``skill``: ``configs/adapters/<skill>`` of this checkout, or
    under ``$CONCLAVE_ADAPTERS`` (an installed package, e.g. the Docker image)."""
    root = os.environ.get(ADAPTERS_ENV) or Path(__file__).resolve().parents[1] / "configs" / "adapters"
    return Path(root) / skill


def base_spec(model_path: str | Path) -> ExpertSpec:
    """The real base model as an expert: the generalist the skill experts sit on."""
    return ExpertSpec(
        id=BASE_ID, model=str(model_path), domain="general",
        description=f"{HUB_ID}: a small general assistant for everyday questions.",
        examples=BASE_EXAMPLES, generation=GenerationParams(max_tokens=64))


def skill_spec(skill: str, adapter: str | Path) -> ExpertSpec:
    """The LoRA expert of ``skill``: its description and a few training questions as
    examples (never test questions)."""
    examples = [item.question for item in skill_items(skill, "train", EXAMPLES_PER_SKILL)]
    return ExpertSpec(
        id=skill, kind="lora", base=BASE_ID, adapter=str(adapter), domain=skill,
        description=SKILLS[skill].description, skills=[skill], examples=examples,
        generation=GenerationParams(max_tokens=48))


def build_real_pool(root: str | Path | None = None, *, live: bool = False) -> list[ExpertSpec]:
    """Prepare the real model and the skill adapters (once) and return their specs: the
    base, then every skill expert but :data:`LIVE_SKILL` (with it when ``live``)."""
    model = prepare_real_model(root)
    folder = Path(root or models_root()) / "skills"
    specs = [base_spec(model)]
    for skill in SKILLS:
        if skill == LIVE_SKILL and not live:
            continue
        source = adapter_source(skill)
        # named by content, so a retrained adapter is never served from a stale copy
        path = build_once(folder / f"{skill}-{_digest(source)}",
                          lambda tmp, s=source: shutil.copytree(s, tmp))
        specs.append(skill_spec(skill, path))
    return specs


def _digest(adapter: Path) -> str:
    """A short hash of an adapter's weights (the committed adapter must exist)."""
    weights = adapter / "adapter_model.safetensors"
    if not weights.exists():
        from experts.errors import ExpertError

        raise ExpertError(f"skill adapter {adapter} is missing: run `make adapters`")
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:10]
