"""How a new expert joins without retraining anything: run it on a validation set, score
its answers, and hand the one-column outcome table to the router (every strategy builds
the expert's profile, pilots and neighbours from it) and to the profile store (so every
router replica does the same).

A validation file is JSONL: ``{"id", "text", "answer", "domain"?, "options"?}`` per line.
With ``options`` (a list), the choices are shown lettered A, B, C... after the question.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experts.engine import GenerationEngine, GenerationParams
from experts.spec import ExpertSpec
from routing.outcomes import OutcomeError, OutcomeTable, read_questions
from routing.scoring import LETTERS, score_answer

PROMPT = "{question}\n\nGive your final answer after 'The answer is'.\nAnswer:"


def load_validation(path: str | Path) -> list[dict]:
    """Rows of a validation JSONL; each needs ``id``, ``text`` and ``answer``."""
    path = Path(path)
    if not path.exists():
        raise OutcomeError(f"validation file not found: {path}")
    rows = list(read_questions(path).values())  # checks JSON, id and text per line
    missing = [str(row["id"]) for row in rows if "answer" not in row]
    if missing:
        raise OutcomeError(f"{path}: question(s) {missing[:5]} have no 'answer'")
    if not rows:
        raise OutcomeError(f"{path}: no validation questions")
    return rows


def render_question(row: dict) -> str:
    """The question text, with lettered options when the row has them."""
    options = row.get("options") or []
    if not options:
        return str(row["text"])
    lines = [f"{LETTERS[i]}. {option}" for i, option in enumerate(options[: len(LETTERS)])]
    return str(row["text"]) + "\nOptions:\n" + "\n".join(lines)


def validate_expert(
    engine: GenerationEngine,
    spec: ExpertSpec,
    val_rows: list[dict],
    *,
    adapter: str | None = None,
    metric: str = "auto",
    batch_size: int = 8,
    max_tokens: int | None = None,
    prompt: str = PROMPT,
    progress=None,
) -> OutcomeTable:
    """Run ``spec``'s expert (``engine``, with ``adapter`` for a LoRA expert) on
    ``val_rows`` and score each answer; a one-column table named ``spec.id``."""
    if not val_rows:
        raise OutcomeError("no validation questions")
    params = GenerationParams(
        max_tokens=max_tokens or max(spec.generation.max_tokens, 32),
        temperature=0.0,
        stop=list(spec.generation.stop),
    )
    prompts = [prompt.format(question=render_question(row)) for row in val_rows]
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        texts.extend(out.text for out in engine.generate(batch, params, [adapter] * len(batch)))
        if progress is not None:
            progress(len(batch))
    scores = [score_answer(text, str(row["answer"]), metric)
              for text, row in zip(texts, val_rows, strict=True)]
    return OutcomeTable(
        ids=[str(row["id"]) for row in val_rows],
        texts=[str(row["text"]) for row in val_rows],
        domains=[str(row.get("domain", spec.domain or "")) for row in val_rows],
        experts=[spec.id],
        scores=np.array(scores, dtype=np.float32).reshape(-1, 1),
        predictions=np.array(texts, dtype=object).reshape(-1, 1),
        answers=[str(row["answer"]) for row in val_rows],
        cost={spec.id: spec.cost},
    )


def validate_and_store(spec: ExpertSpec, val_rows: list[dict], lookup, store, **options):
    """Load ``spec``'s engine (``lookup``: id → spec, for a LoRA expert's base), validate
    it on ``val_rows`` and save its outcomes in ``store`` (a ProfileStore); the table."""
    from experts.loader import ExpertLoader

    loader = ExpertLoader(lookup)
    engine = loader.load(spec.id)
    try:
        adapter = loader.prepare(engine, spec)
        table = validate_expert(engine, spec, val_rows, adapter=adapter, **options)
    finally:
        engine.close()
    store.save(spec.id, table)
    return table
