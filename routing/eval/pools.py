"""Named expert pools for ``conclave eval --pool NAME`` (or a comma-separated list of models).

The MMLU-Pro pools of the routing issue's reference figures:

- ``open``: 26 open-weight models — every model but the closed API ones (gemini-1.5-flash,
  gemini-1.5-pro) and jamba-1.5-large (served through AI21's API in the source runs). With
  this choice the per-question oracle on our 80/20 split is 0.928, the issue's figure.
- ``small``: 9 models of at most ~8B parameters, one per release line (the newest or
  instruction-tuned variant where the data has several): its best single model is
  Meta-Llama-3.1-8B-Instruct, as in the issue (0.456 there, 0.449 on our split).
"""

from __future__ import annotations

from routing.outcomes import OutcomeError

CLOSED = ("gemini-1.5-flash-002", "gemini-1.5-pro-002", "jamba-1.5-large")
SMALL = (
    "Llama-2-7b-hf", "Meta-Llama-3-8B", "Meta-Llama-3_1-8B-Instruct", "Mistral-7B-Instruct-v0.2",
    "Phi-3-mini-4k-instruct", "Qwen1.5-7B-Chat", "Yi-6b-Chat", "mathstral-7B", "gemma-7b",
)


def resolve_pool(spec: str | None, experts: list[str]) -> list[str]:
    """The experts ``spec`` names: None → all, ``open``, ``small``, or ``m1,m2,...``."""
    if spec is None or not spec.strip():
        return list(experts)
    if spec == "open":
        return [e for e in experts if e not in CLOSED]
    names = list(SMALL) if spec == "small" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in experts]
    if unknown:
        raise OutcomeError(f"pool: unknown model(s) {unknown}; known: {', '.join(experts)}")
    if len(names) < 2:
        raise OutcomeError("pool: name at least two models (or 'open' / 'small')")
    return names
