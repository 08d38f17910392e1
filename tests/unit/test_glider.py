"""GLIDER's global router: task instructions vs query (or written instruction) embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from test_skills import ScriptedEngine
from text_tables import QUERIES, text_table

from routing.errors import RoutingError
from routing.strategies.glider import GliderStrategy, InstructionWriter

INSTRUCTIONS = {
    "mathy": "Solve calculus problems: derivatives and integrals.",
    "lawyer": "Answer questions about contract law and court remedies.",
    "medic": "Diagnose and treat patients' medical conditions.",
}


def _picks(strategy, minilm, texts) -> list[str]:
    scores = strategy.score(texts, minilm.encode(texts))
    return [scores.experts[j] for j in scores.values.argmax(axis=1)]


@pytest.mark.parametrize("instructions", [INSTRUCTIONS, None], ids=["instructions", "centroids"])
def test_each_query_goes_to_its_expert(minilm, instructions):
    table = text_table()
    strategy = GliderStrategy(minilm, instructions=instructions)
    strategy.fit(table, minilm.encode(table.texts))
    assert _picks(strategy, minilm, list(QUERIES.values())) == list(QUERIES)
    scores = strategy.score(["x"], minilm.encode(["x"]))
    source = "instruction" if instructions else "centroid"
    assert set(scores.explanations[0]["expert_vector"].values()) == {source}


def test_instruction_writer_rewrites_the_query(minilm):
    # The writer turns an opaque query into the task it asks for.
    engine = ScriptedEngine({"Zq-17": ["Diagnose a patient's illness from symptoms."]})
    table = text_table()
    strategy = GliderStrategy(minilm, writer=InstructionWriter(engine), instructions=INSTRUCTIONS)
    strategy.fit(table, minilm.encode(table.texts))
    scores = strategy.score(["Zq-17"], minilm.encode(["Zq-17"]))
    assert scores.experts[int(scores.values[0].argmax())] == "medic"
    assert scores.explanations[0]["instruction"].startswith("Diagnose")


def test_add_remove_and_errors(minilm):
    table = text_table(["mathy", "lawyer"])
    strategy = GliderStrategy(minilm)
    strategy.fit(table, minilm.encode(table.texts))
    query = [QUERIES["medic"]]
    strategy.instructions["medic"] = INSTRUCTIONS["medic"]
    strategy.add_expert("medic", text_table(["medic"]), minilm.encode(table.texts))
    assert _picks(strategy, minilm, query) == ["medic"]
    strategy.remove_expert("medic")
    assert strategy.experts == ["mathy", "lawyer"] and _picks(strategy, minilm, query) != ["medic"]
    hopeless = text_table(["mathy"])
    hopeless.scores[:] = 0.0
    with pytest.raises(RoutingError, match="no task instruction"):
        strategy.add_expert("mathy", hopeless, minilm.encode(hopeless.texts))
    with pytest.raises(RoutingError, match="unknown expert"):
        strategy.remove_expert("medic")
    with pytest.raises(RoutingError, match="no experts"):
        GliderStrategy(minilm).score(["q"], np.zeros((1, 384), np.float32))
