"""GLIDER's global router (Li et al., 2025): a one-sentence task instruction per query,
embedded and compared (cosine) with each expert's task-instruction embedding.

The instruction writer is any generation engine prompted to state the task in one
sentence; without one, the query itself is embedded. An expert's vector is the embedding
of its spec's ``task_instruction`` when known, else the centroid of the validation
questions it answered correctly (the task it has shown it can do).
"""

from __future__ import annotations

import numpy as np

from experts.engine import GenerationEngine, GenerationParams
from routing.encoder import normalise
from routing.errors import RoutingError
from routing.outcomes import OutcomeTable
from routing.strategies.base import RoutingStrategy, Scores, check_fit_inputs, check_queries

INSTRUCTION_PROMPT = (
    "State, in one sentence, the task this request asks for (the kind of problem and the "
    "skill it needs), without solving it.\n\nRequest: {query}\nTask:"
)


class InstructionWriter:
    """Query → one-sentence task instruction, written by ``engine`` (greedy)."""

    def __init__(self, engine: GenerationEngine, adapter: str | None = None, max_tokens=48):
        self.engine, self.adapter, self.max_tokens = engine, adapter, max_tokens

    def write(self, queries: list[str]) -> list[str]:
        prompts = [INSTRUCTION_PROMPT.format(query=q) for q in queries]
        params = GenerationParams(max_tokens=self.max_tokens, stop=["\n"])
        outputs = self.engine.generate(prompts, params, [self.adapter] * len(prompts))
        # An empty instruction would embed to nothing useful: fall back to the query.
        return [out.text.strip() or q for out, q in zip(outputs, queries, strict=True)]


class GliderStrategy(RoutingStrategy):
    """Cosine between the query's task instruction and each expert's."""

    name = "glider"
    needs = ("encoder", "instructions")  # the experts' task instructions are embedded

    def __init__(
        self,
        encoder,
        writer: InstructionWriter | None = None,
        instructions: dict[str, str] | None = None,
        correct_at: float = 0.5,
    ):
        self.encoder, self.writer = encoder, writer
        self.instructions = dict(instructions or {})
        self.correct_at = correct_at
        self._experts: list[str] = []
        self._vectors: dict[str, np.ndarray] = {}
        self._source: dict[str, str] = {}  # "instruction" or "centroid", for explanations

    def fit(self, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        check_fit_inputs(outcomes, embeddings)
        self._experts, self._vectors, self._source = [], {}, {}
        for expert in outcomes.experts:
            self.add_expert(expert, outcomes, embeddings)

    def add_expert(self, expert: str, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        check_fit_inputs(outcomes, embeddings, one_expert=expert)
        if expert in self.instructions:
            vector, source = self.encoder.encode([self.instructions[expert]])[0], "instruction"
        else:
            column = outcomes.scores[:, outcomes.experts.index(expert)]
            good = np.nan_to_num(column, nan=0.0) >= self.correct_at
            if not good.any():
                raise RoutingError(
                    f"glider: expert {expert!r} has no task instruction and answered no "
                    "validation question correctly; give it an instruction or outcomes"
                )
            vector, source = normalise(embeddings[good].mean(axis=0, keepdims=True))[0], "centroid"
        if expert not in self._vectors:
            self._experts.append(expert)
        self._vectors[expert], self._source[expert] = vector, source

    def remove_expert(self, expert: str) -> None:
        if expert not in self._vectors:
            raise RoutingError(f"glider: unknown expert {expert!r}")
        self._experts.remove(expert)
        del self._vectors[expert], self._source[expert]

    def score(self, texts: list[str], embeddings: np.ndarray) -> Scores:
        if not self._experts:
            raise RoutingError("glider strategy has no experts; fit() or add_expert() first")
        check_queries(texts, embeddings, True, self.name)
        task = embeddings
        instructions = None
        if self.writer is not None:
            instructions = self.writer.write(texts)
            task = self.encoder.encode(instructions)
        matrix = np.stack([self._vectors[e] for e in self._experts])
        values = task @ matrix.T
        explanations = []
        for i, row in enumerate(values):
            top = np.argsort(-row)[:3]
            explanations.append({
                "instruction": instructions[i] if instructions else None,
                "similarity": {self._experts[j]: round(float(row[j]), 4) for j in top},
                "expert_vector": {self._experts[j]: self._source[self._experts[j]] for j in top},
            })
        return Scores(experts=list(self._experts), values=values, explanations=explanations)
