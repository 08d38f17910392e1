"""The contrastive strategy with the encoder's top layers fine-tuned (``encoder_layers``),
on the real bundled MiniLM and a small text table: its untrained split reproduces the
encoder's own embeddings, a few steps learn which expert answers which kind of question,
the shared encoder is untouched, and save/load and add_expert behave as in head mode."""

from __future__ import annotations

import numpy as np
import pytest

from routing.errors import RoutingError
from routing.outcomes import OutcomeTable
from routing.strategies import StrategyContext, make_strategy

MATH = ["what is the derivative of x squared", "solve 3x + 5 = 20 for x",
        "integrate sin x from 0 to pi", "how many primes are below 30",
        "factor the polynomial x^2 - 9", "what is the limit of 1/n as n grows",
        "compute the determinant of a 2x2 matrix", "find the roots of x^2 + x - 6"]
BIO = ["what does the mitochondria do in a cell", "how do enzymes speed up reactions",
       "what is the role of DNA polymerase", "how do neurons transmit signals",
       "what is photosynthesis in plants", "how does the immune system fight viruses",
       "what are the stages of mitosis", "how do red blood cells carry oxygen"]
OPTIONS = {"encoder_layers": 1, "max_steps": 12, "eval_every": 4, "encoder_batch_size": 12,
           "encoder_lr": 2e-4, "lr": 1e-2, "clusters": 2, "holdout": 0.2}


def table(texts_a: list[str], texts_b: list[str]) -> OutcomeTable:
    """alpha right on the first texts, beta on the second, gamma half right on all."""
    n, m = len(texts_a), len(texts_b)
    scores = np.array([[1.0] * n + [0.0] * m, [0.0] * n + [1.0] * m, [0.5] * (n + m)],
                      dtype=np.float32).T.copy()
    return OutcomeTable(ids=[f"q{i}" for i in range(n + m)], texts=[*texts_a, *texts_b],
                        domains=["math"] * n + ["biology"] * m,
                        experts=["alpha", "beta", "gamma"], scores=scores)


@pytest.fixture(scope="module")
def fitted(minilm):
    train = table(MATH * 3, BIO * 3)
    strategy = make_strategy("contrastive", OPTIONS, StrategyContext(encoder=minilm))
    before = minilm.encode(MATH[:2])
    strategy.fit(train, minilm.encode(train.texts))
    assert np.array_equal(minilm.encode(MATH[:2]), before)  # the shared encoder is untouched
    return strategy


def test_the_untrained_split_embeds_as_the_encoder_does(minilm):
    from routing.strategies.contrastive_encoder import EncoderRouter
    from routing.strategies.contrastive_model import TrainSchedule

    texts = MATH[:3] + BIO[:3]
    for layers in (1, 6):
        model = EncoderRouter(minilm, 3, TrainSchedule(encoder_layers=layers))
        h = model.embed_texts(texts).numpy()
        assert (h * minilm.encode(texts)).sum(axis=1) == pytest.approx(np.ones(6), abs=1e-4)


def test_a_few_steps_route_each_kind_of_question_to_its_expert(fitted, minilm):
    queries = ["differentiate x cubed", "how do cells divide"]
    scores = fitted.score(queries, minilm.encode(queries))
    assert [scores.experts[j] for j in np.argmax(scores.values, axis=1)] == ["alpha", "beta"]
    assert fitted.train_log.curve and fitted.train_log.best_step > 0


def test_save_load_and_add_expert_as_in_head_mode(fitted, minilm, tmp_path):
    queries = MATH[:2] + BIO[:2]
    emb = minilm.encode(queries)
    before = fitted.score(queries, emb).values
    path = fitted.save(tmp_path / "router.safetensors")
    loaded = make_strategy("contrastive", {}, StrategyContext(encoder=minilm))
    loaded.load(path)
    assert loaded.schedule.encoder_layers == 1
    assert np.array_equal(loaded.score(queries, emb).values, before)
    newcomer = OutcomeTable(ids=["n1", "n2", "n3"], texts=BIO[5:8], domains=["biology"] * 3,
                            experts=["delta"], scores=np.ones((3, 1), dtype=np.float32))
    loaded.add_expert("delta", newcomer, minilm.encode(newcomer.texts))
    assert np.array_equal(loaded.score(queries, emb).values[:, :3], before)
    few = OutcomeTable(ids=["f1", "f2"], texts=BIO[:2], domains=["biology"] * 2,
                       experts=["eps"], scores=np.ones((2, 1), dtype=np.float32))
    with pytest.raises(RoutingError, match="needs at least 3"):
        loaded.add_expert("eps", few, minilm.encode(few.texts))


def test_an_encoder_layer_count_the_encoder_lacks_is_refused(minilm):
    strategy = make_strategy("contrastive", {**OPTIONS, "encoder_layers": 7},
                             StrategyContext(encoder=minilm))
    train = table(MATH * 2, BIO * 2)
    with pytest.raises(RoutingError, match="encoder_layers must be 1..6"):
        strategy.fit(train, minilm.encode(train.texts))
