"""Skills (Symbolic-MoE) on a hand-made text table where the right expert is known."""

from __future__ import annotations

import numpy as np
import pytest
from text_tables import QUERIES, text_table

from experts.engine import Generation, GenerationEngine
from routing.errors import RoutingError
from routing.keywords import EmbeddingKeywordExtractor, LLMKeywordExtractor, candidate_phrases
from routing.outcomes import OutcomeTable
from routing.strategies import StrategyContext, make_strategy
from routing.strategies.skills import SkillsStrategy


class ScriptedEngine(GenerationEngine):
    """Replies from a script: one list of replies per prompt substring, indexed by seed."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = script

    def generate(self, prompts, params=None, adapters=None):
        replies = []
        for prompt in prompts:
            options = next((r for key, r in self.script.items() if key in prompt), [""])
            replies.append(options[(params.seed or 0) % len(options)])
        return [Generation(text=r, prompt_tokens=1, completion_tokens=1) for r in replies]


@pytest.fixture(scope="module")
def fitted(minilm):
    def build(variant: str) -> SkillsStrategy:
        table = text_table()
        strategy = SkillsStrategy(minilm, variant=variant)
        strategy.fit(table, minilm.encode(table.texts))
        return strategy

    return build


@pytest.mark.parametrize("variant", ["faithful", "smoothed"])
def test_each_query_goes_to_its_expert(fitted, minilm, variant):
    strategy = fitted(variant)
    texts = list(QUERIES.values())
    scores = strategy.score(texts, minilm.encode(texts))
    assert scores.experts == ["mathy", "lawyer", "medic"]
    picked = [scores.experts[j] for j in np.nanargmax(scores.values, axis=1)]
    assert picked == list(QUERIES)
    explanation = scores.explanations[0]
    assert explanation["skills"] and "mathy" in explanation["profile"]


def test_faithful_profile_counts_plus_and_minus_one(fitted):
    strategy = fitted("faithful")
    skill = strategy.skills.index("contract")
    net = dict(zip(strategy.experts, strategy._net[skill], strict=True))
    assert net["lawyer"] > 0 and net["mathy"] < 0 and net["medic"] < 0
    assert net["lawyer"] == -net["mathy"]  # every question counts +1 for one, −1 for the others
    assert strategy.global_competence().sum() == pytest.approx(1.0)


def test_add_and_remove_an_expert_changes_decisions(fitted, minilm):
    strategy = fitted("faithful")
    query = [QUERIES["lawyer"]]
    table = text_table()
    # "judge" gets every law question right and, unlike lawyer, the others too.
    judge = OutcomeTable(ids=table.ids, texts=table.texts, domains=table.domains,
                         experts=["judge"], scores=np.ones((len(table), 1), np.float32))
    strategy.add_expert("judge", judge, minilm.encode(judge.texts))
    scores = strategy.score(query, minilm.encode(query))
    assert scores.experts[int(np.nanargmax(scores.values[0]))] == "judge"
    strategy.remove_expert("judge")
    scores = strategy.score(query, minilm.encode(query))
    assert "judge" not in scores.experts
    assert scores.experts[int(np.nanargmax(scores.values[0]))] == "lawyer"
    with pytest.raises(RoutingError, match="unknown expert"):
        strategy.remove_expert("judge")


def test_query_without_any_skill_has_no_opinion(fitted, minilm):
    strategy = fitted("faithful")
    strategy.skill_floor = 1.01  # nothing can map: the selector must fall back
    values = strategy.score(["hello"], minilm.encode(["hello"])).values
    assert np.isnan(values).all()


def test_llm_extractor_keeps_repeated_short_keywords():
    engine = ScriptedEngine({"integral": [
        "calculus, integration, x",
        "Calculus; integration techniques for definite integrals",
        "1. calculus\n2. integration",
        "limits",
        "calculus, limits",
    ]})
    extractor = LLMKeywordExtractor(engine)
    (keywords,) = extractor.extract(["Evaluate the integral of x."])
    # seen ≥ 2 of 5 samples and ≤ 20 characters; the long phrase is dropped
    assert keywords[0] == "calculus" and set(keywords) == {"calculus", "integration", "limits"}


def test_skills_with_an_llm_extractor(minilm):
    engine = ScriptedEngine({
        "derivative": ["calculus, derivatives"], "integral": ["calculus, integration"],
        "contract": ["contract law"], "patient": ["medicine, diagnosis"],
    })
    table = text_table()
    strategy = SkillsStrategy(minilm, extractor=LLMKeywordExtractor(engine))
    strategy.fit(table, minilm.encode(table.texts))
    assert {"calculus", "contract law", "medicine"} <= set(strategy.skills)
    texts = ["Find the derivative of x.", "Who breached the contract?"]
    values = strategy.score(texts, minilm.encode(texts)).values
    assert list(np.nanargmax(values, axis=1)) == [0, 1]


def test_candidate_phrases_skip_stopwords_and_long_phrases():
    phrases = candidate_phrases("What is the derivative of the natural logarithm function?")
    assert "derivative" in phrases and "natural logarithm" in phrases
    assert "what" not in phrases and "the derivative" not in phrases
    assert all(len(p) <= 20 for p in phrases)


def test_bad_inputs(minilm):
    with pytest.raises(RoutingError, match="variant"):
        SkillsStrategy(minilm, variant="magic")
    with pytest.raises(RoutingError, match="before fit"):
        SkillsStrategy(minilm).score(["q"], np.zeros((1, 384), np.float32))
    with pytest.raises(RoutingError, match="no phrase occurs"):
        EmbeddingKeywordExtractor(minilm).fit(["one lonely question"], np.zeros((1, 384)))
    with pytest.raises(RoutingError, match="unknown routing strategy 'skils'; valid: .*skills"):
        make_strategy("skils", context=StrategyContext(minilm))
