"""Skills: Symbolic-MoE's skill-based recruiting (Chen et al., 2025).

Each validation question gets keywords (an LLM extractor, or the embedding extractor
when none is configured); each keyword maps to its nearest vocabulary skill (cosine). An
expert's profile holds, per skill, +1 for each correct validation answer carrying that
skill and −1 for each wrong one (a fractional score s counts 2s − 1).

``variant="faithful"`` (registered as ``skills-paper``) is the paper's rule: local score = sum of the profile over the
query's skills; global competence = softmax over experts, temperature 0.5, of the profile
total (divided by the number of skill-answers behind it, so totals of different sizes
compare); weight = local × global.

``variant="smoothed"`` (the default, ``skills``) is the measured improvement: per skill, the expert's accuracy
shrunk towards a domain prior, ``(correct + β·prior) / (answered + β)``, where the prior
is the expert's accuracy over the domains that skill occurs in; the query's score is
the similarity-weighted mean over its skills. Rare skills back off to the prior instead
of swinging on one or two answers.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from routing.errors import RoutingError
from routing.keywords import EmbeddingKeywordExtractor, KeywordExtractor
from routing.outcomes import OutcomeTable
from routing.strategies.base import RoutingStrategy, Scores, check_fit_inputs, check_queries

VARIANTS = ("faithful", "smoothed")


class SkillsStrategy(RoutingStrategy):
    """Skill profiles from validation outcomes; see the module doc for the two rules."""

    name = "skills"
    needs = ("encoder",)  # keywords and skills are embedded
    param_grid = {"smoothing": [3.0, 10.0, 30.0]}

    def __init__(
        self,
        encoder,
        extractor: KeywordExtractor | None = None,
        variant: str = "smoothed",
        temperature: float = 0.5,
        min_support: int = 2,
        skill_floor: float = 0.5,
        smoothing: float = 10.0,
    ):
        if variant not in VARIANTS:
            raise RoutingError(f"unknown skills variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.encoder = encoder
        self.extractor = extractor or EmbeddingKeywordExtractor(encoder)
        self.variant, self.temperature = variant, temperature
        self.min_support, self.skill_floor, self.smoothing = min_support, skill_floor, smoothing
        self.skills: list[str] = []
        self._skill_vectors = np.zeros((0, 0), dtype=np.float32)
        self._skill_domain = np.zeros((0, 0))  # P(domain | skill)
        self._domains: list[str] = []
        self._experts: list[str] = []
        # Per (skill, expert): net (+1/−1 sums), correct (score sums), answered (counts),
        # prior (the expert's accuracy over the skill's domains).
        self._net = self._correct = self._answered = self._prior = np.zeros((0, 0))
        self._keyword_vectors: dict[str, np.ndarray] = {}

    def fit(self, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        check_fit_inputs(outcomes, embeddings)
        if isinstance(self.extractor, EmbeddingKeywordExtractor):
            self.extractor.fit(outcomes.texts, embeddings)
            self._keyword_vectors.update(
                zip(self.extractor.vocabulary, self.extractor.vectors, strict=True)
            )
        keywords = self.extractor.extract(outcomes.texts, embeddings)
        support = Counter(kw for kws in keywords for kw in set(kws))
        skills = sorted(kw for kw, n in support.items() if n >= self.min_support)
        if not skills:
            raise RoutingError(
                f"no keyword occurs in {self.min_support}+ validation questions; "
                "cannot build a skill vocabulary"
            )
        self.skills = skills
        self._skill_vectors = self._embed(skills)
        q_idx, s_idx, _ = self._map(keywords)
        self._domains = sorted(set(outcomes.domains))
        self._skill_domain = self._domain_mixture(outcomes.domains, q_idx, s_idx)
        self._experts = list(outcomes.experts)
        self._net, self._correct, self._answered, self._prior = self._columns(
            outcomes, q_idx, s_idx
        )

    def add_expert(self, expert: str, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        check_fit_inputs(outcomes, embeddings, one_expert=expert)
        column = outcomes.with_experts([expert])
        if not self.skills:
            self.fit(column, embeddings)
            return
        q_idx, s_idx, _ = self._map(self.extractor.extract(column.texts, embeddings))
        new = self._columns(column, q_idx, s_idx)
        if expert in self._experts:
            self.remove_expert(expert)
        self._experts.append(expert)
        self._net, self._correct, self._answered, self._prior = (
            np.concatenate([old, col], axis=1)
            for old, col in zip(
                (self._net, self._correct, self._answered, self._prior), new, strict=True
            )
        )

    def remove_expert(self, expert: str) -> None:
        if expert not in self._experts:
            raise RoutingError(f"skills: unknown expert {expert!r}")
        j = self._experts.index(expert)
        self._experts.pop(j)
        self._net, self._correct, self._answered, self._prior = (
            np.delete(m, j, axis=1) for m in (self._net, self._correct, self._answered, self._prior)
        )

    def score(self, texts: list[str], embeddings: np.ndarray) -> Scores:
        if not self.skills:
            raise RoutingError("skills strategy used before fit()")
        check_queries(texts, embeddings, True, self.name)
        keywords = self.extractor.extract(texts, embeddings)
        q_idx, s_idx, sims = self._map(keywords)
        incidence = np.zeros((len(texts), len(self.skills)))
        np.maximum.at(incidence, (q_idx, s_idx), sims)  # one entry per (query, skill)
        if self.variant == "faithful":
            values = (incidence > 0).astype(float) @ self._net * self.global_competence()
        else:
            mass = incidence.sum(axis=1, keepdims=True)
            values = incidence @ self.skill_accuracy() / np.where(mass > 0, mass, 1.0)
        values[incidence.sum(axis=1) == 0] = np.nan  # no skill matched: no opinion
        return Scores(
            experts=list(self._experts),
            values=values,
            explanations=[self._explain(kws, inc, val)
                          for kws, inc, val in zip(keywords, incidence, values, strict=True)],
        )

    def global_competence(self) -> np.ndarray:
        """Per expert: softmax over experts (temperature) of net profile / skill-answers."""
        total = self._net.sum(axis=0) / np.maximum(self._answered.sum(axis=0), 1.0)
        logits = total / self.temperature
        weights = np.exp(logits - logits.max()) if logits.size else logits
        return weights / weights.sum() if weights.size else weights

    def skill_accuracy(self) -> np.ndarray:
        """Per (skill, expert): accuracy shrunk towards the domain prior (smoothed rule)."""
        return (self._correct + self.smoothing * self._prior) / (self._answered + self.smoothing)

    # internals

    def _embed(self, phrases: list[str]) -> np.ndarray:
        missing = [p for p in dict.fromkeys(phrases) if p not in self._keyword_vectors]
        if missing:
            self._keyword_vectors.update(zip(missing, self.encoder.encode(missing), strict=True))
        if not phrases:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([self._keyword_vectors[p] for p in phrases])

    def _map(self, keywords: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(question index, skill index, cosine) for every keyword whose nearest skill is at
        least ``skill_floor`` similar."""
        flat = [(i, kw) for i, kws in enumerate(keywords) for kw in kws]
        if not flat:
            return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
        unique = list(dict.fromkeys(kw for _, kw in flat))
        sims = self._embed(unique) @ self._skill_vectors.T
        best, best_sim = sims.argmax(axis=1), sims.max(axis=1)
        slot = {kw: n for n, kw in enumerate(unique)}
        rows = np.array([i for i, _ in flat])
        cols = np.array([slot[kw] for _, kw in flat])
        keep = best_sim[cols] >= self.skill_floor
        return rows[keep], best[cols][keep], best_sim[cols][keep].astype(float)

    def _columns(self, outcomes: OutcomeTable, q_idx: np.ndarray, s_idx: np.ndarray):
        # Deduplicate (question, skill) pairs: a skill counts once per question.
        pairs = np.unique(np.stack([q_idx, s_idx], axis=1), axis=0) if len(q_idx) else None
        q_idx, s_idx = (pairs[:, 0], pairs[:, 1]) if pairs is not None else (q_idx, s_idx)
        scores = np.asarray(outcomes.scores, dtype=float)
        answered = ~np.isnan(scores)
        shape = (len(self.skills), scores.shape[1])
        net, correct, count = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        np.add.at(net, s_idx, np.where(answered, 2 * scores - 1, 0.0)[q_idx])
        np.add.at(correct, s_idx, np.nan_to_num(scores)[q_idx])
        np.add.at(count, s_idx, answered[q_idx].astype(float))
        return net, correct, count, self._skill_domain @ self._domain_accuracy(outcomes)

    def _domain_mixture(self, domains: list[str], q_idx: np.ndarray, s_idx: np.ndarray):
        slot = {d: n for n, d in enumerate(self._domains)}
        d_idx = np.array([slot[d] for d in domains])
        mix = np.zeros((len(self.skills), len(self._domains)))
        np.add.at(mix, (s_idx, d_idx[q_idx]), 1.0)
        empty = mix.sum(axis=1) == 0
        mix[empty] = 1.0  # a skill seen nowhere: all domains alike
        return mix / mix.sum(axis=1, keepdims=True)

    def _domain_accuracy(self, outcomes: OutcomeTable) -> np.ndarray:
        """(domain, expert) mean score; the expert's overall mean where it has none."""
        scores = np.asarray(outcomes.scores, dtype=float)
        overall = np.nan_to_num(np.nanmean(np.where(np.isnan(scores), np.nan, scores), axis=0)
                                if np.isfinite(scores).any() else np.zeros(scores.shape[1]))
        acc = np.tile(overall, (len(self._domains), 1))
        domains = np.array(outcomes.domains)
        for d, name in enumerate(self._domains):
            rows = scores[domains == name]
            seen = (~np.isnan(rows)).sum(axis=0) > 0
            acc[d, seen] = np.nanmean(rows[:, seen], axis=0)
        return acc

    def _explain(self, keywords: list[str], incidence: np.ndarray, values: np.ndarray) -> dict:
        matched = np.flatnonzero(incidence)
        if not np.isfinite(values).any():
            return {"keywords": keywords, "skills": []}
        top = np.argsort(-np.nan_to_num(values, nan=-np.inf))[:3]
        table = self._net if self.variant == "faithful" else self.skill_accuracy()
        return {
            "keywords": keywords,
            "skills": [self.skills[s] for s in matched],
            "profile": {
                self._experts[j]: {self.skills[s]: round(float(table[s, j]), 3) for s in matched}
                for j in top
            },
        }


class PaperSkillsStrategy(SkillsStrategy):
    """The paper's rule as published (``variant="faithful"``), kept for comparison."""

    name = "skills-paper"
    param_grid = {}

    def __init__(self, encoder, extractor: KeywordExtractor | None = None, **options):
        super().__init__(encoder, extractor, variant="faithful", **options)
