"""Keyword (skill) extractors for the Symbolic-MoE skills strategy.

- :class:`LLMKeywordExtractor`: the paper's protocol with any generation engine: ask for
  2–5 keywords, sample 5 times, keep keywords of at most 20 characters seen more than once.
- :class:`EmbeddingKeywordExtractor`: for when no LLM is configured. Candidate phrases are
  the question's own n-grams plus a phrase vocabulary (frequent n-grams of the fitted
  questions); they are ranked by cosine similarity to the question embedding and the top
  few are kept. All of it is one matrix product per batch.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter

import numpy as np

from experts.engine import GenerationEngine, GenerationParams
from routing.errors import RoutingError

MAX_CHARS = 20  # the paper's keyword length limit
_TOKEN = re.compile(r"[a-z][a-z0-9'\-]*[a-z0-9]|[a-z]")
STOPWORDS = frozenset(
    "a about above after again against all also am an and any are as at be because been "
    "before being below between both but by can could did do does doing down during each "
    "either else few for from further had has have having he her here hers herself him "
    "himself his how however i if in into is it its itself just least less let like made "
    "make many may me might more most much must my myself near need no nor not now of off "
    "often on once one only or other others our ours out over own per perhaps rather same "
    "shall she should since so some such than that the their theirs them then there these "
    "they this those though through thus to too two under until up upon us use used using "
    "very via was we well were what whatever when where whether which while who whom whose "
    "why will with within without would yet you your yours following given answer question "
    "questions choose correct option options true false best statement statements "
    "describe describes described explain value find compute calculate determine select "
    "q b c d e f g h j k l m n o p r s t u v w x y z".split()
)
KEYWORD_PROMPT = (
    "Identify 2 to 5 keywords naming the skills or knowledge needed to answer the "
    "question below. Reply with the keywords only, separated by commas.\n\n"
    "Question: {question}\nKeywords:"
)


def candidate_phrases(text: str, max_n: int = 3, max_chars: int = MAX_CHARS) -> list[str]:
    """The question's n-grams (n ≤ ``max_n``) that neither start nor end with a stopword,
    at most ``max_chars`` long, without duplicates, in order of appearance."""
    tokens = _TOKEN.findall(text.lower())
    phrases: dict[str, None] = {}
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            gram = tokens[i:i + n]
            if gram[0] in STOPWORDS or gram[-1] in STOPWORDS or len(gram[0]) < 3:
                continue
            phrase = " ".join(gram)
            if len(phrase) <= max_chars and not phrase.replace("-", "").isdigit():
                phrases[phrase] = None
    return list(phrases)


class KeywordExtractor(ABC):
    """Texts → keywords per text."""

    def fit(self, texts: list[str], embeddings: np.ndarray) -> None:  # noqa: B027 (optional)
        """Learn from the validation questions (default: nothing to learn)."""

    @abstractmethod
    def extract(self, texts: list[str], embeddings: np.ndarray) -> list[list[str]]:
        """Keywords of each text (lowercase, at most 20 characters each)."""


class LLMKeywordExtractor(KeywordExtractor):
    """Symbolic-MoE's extractor: ``samples`` sampled answers to :data:`KEYWORD_PROMPT`;
    keywords of ≤ ``max_chars`` characters that occur in at least ``min_count`` of them."""

    def __init__(
        self,
        engine: GenerationEngine,
        samples: int = 5,
        min_count: int = 2,
        max_chars: int = MAX_CHARS,
        temperature: float = 0.7,
        adapter: str | None = None,
    ):
        if samples < 1 or min_count < 1:
            raise RoutingError("samples and min_count must be >= 1")
        self.engine, self.samples, self.min_count = engine, samples, min_count
        self.max_chars, self.temperature, self.adapter = max_chars, temperature, adapter

    def extract(self, texts: list[str], embeddings: np.ndarray | None = None) -> list[list[str]]:
        prompts = [KEYWORD_PROMPT.format(question=text) for text in texts]
        counts = [Counter() for _ in texts]
        for seed in range(self.samples):
            params = GenerationParams(
                max_tokens=32, temperature=self.temperature, stop=["\n\n"], seed=seed
            )
            outputs = self.engine.generate(prompts, params, [self.adapter] * len(prompts))
            for count, output in zip(counts, outputs, strict=True):
                count.update(set(self.parse(output.text)))
        return [[kw for kw, n in count.most_common() if n >= self.min_count] for count in counts]

    def parse(self, reply: str) -> list[str]:
        """Keywords in one reply: split on commas, semicolons and new lines; bullets and
        numbering stripped; lowercase; longer than ``max_chars`` dropped."""
        words = []
        for part in re.split(r"[,;\n]", reply):
            word = re.sub(r"^[\s\-\*\d\.\)]+", "", part).strip(" .\"'`").lower()
            if word and len(word) <= self.max_chars:
                words.append(word)
        return words


class EmbeddingKeywordExtractor(KeywordExtractor):
    """Keywords without an LLM: phrases ranked by cosine similarity to the question.

    ``fit`` builds the phrase vocabulary: n-grams found in at least ``min_df`` questions and,
    on large sets, in at most a ``max_df`` fraction of them (too common to name a skill);
    the ``max_vocab`` most frequent are embedded once. A phrase that occurs in the question
    gets ``contain_bonus`` added to its similarity.
    """

    def __init__(
        self,
        encoder,
        per_query: int = 4,
        max_n: int = 3,
        min_df: int = 2,
        max_df: float = 0.05,
        max_vocab: int = 4000,
        contain_bonus: float = 0.1,
    ):
        self.encoder, self.per_query, self.max_n = encoder, per_query, max_n
        self.min_df, self.max_df, self.max_vocab = min_df, max_df, max_vocab
        self.contain_bonus = contain_bonus
        self.vocabulary: list[str] = []
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self._position: dict[str, int] = {}

    def fit(self, texts: list[str], embeddings: np.ndarray) -> None:
        df = Counter(p for text in texts for p in candidate_phrases(text, self.max_n))
        ceiling = max(self.min_df, int(self.max_df * len(texts))) if len(texts) >= 200 else None
        kept = [
            (n, p) for p, n in df.items()
            if n >= self.min_df and (ceiling is None or n <= ceiling)
        ]
        kept.sort(key=lambda item: (-item[0], item[1]))
        self.vocabulary = [p for _, p in kept[: self.max_vocab]]
        if not self.vocabulary:
            raise RoutingError(
                f"no phrase occurs in {self.min_df}+ of the {len(texts)} validation questions; "
                "give more validation questions or lower min_df"
            )
        self.vectors = self.encoder.encode(self.vocabulary)
        self._position = {p: i for i, p in enumerate(self.vocabulary)}

    def extract(self, texts: list[str], embeddings: np.ndarray) -> list[list[str]]:
        if not self.vocabulary:
            raise RoutingError("keyword extractor used before fit()")
        keywords = []
        for start in range(0, len(texts), 1024):  # bounded memory: 1024 × vocabulary floats
            sims = embeddings[start:start + 1024] @ self.vectors.T
            for row, text in zip(sims, texts[start:start + 1024], strict=True):
                inside = [self._position[p] for p in candidate_phrases(text, self.max_n)
                          if p in self._position]
                row[inside] += self.contain_bonus
                top = np.argpartition(-row, min(self.per_query, len(row) - 1))[: self.per_query]
                top = top[np.argsort(-row[top])]
                keywords.append([self.vocabulary[j] for j in top])
        return keywords
