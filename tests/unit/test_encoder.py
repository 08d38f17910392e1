"""The real bundled MiniLM encoder and the on-disk embedding cache."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.config import EncoderConfig
from routing.encoder import EmbeddingCache, SentenceEncoder, build_encoder
from routing.errors import RoutingError


def test_rows_are_normalised_and_meaningful(minilm):
    vectors = minilm.encode(["the integral of x squared", "integrate x^2 dx", "a contract dispute"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384) and minilm.dim == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


@pytest.mark.parametrize("texts", [[""], ["ok", "   "], "a plain string"])
def test_empty_or_misshapen_input_is_a_routing_error(minilm, texts):
    with pytest.raises(RoutingError, match="empty|list of texts"):
        minilm.encode(texts)


def test_empty_batch_gives_no_rows(minilm):
    assert minilm.encode([]).shape == (0, 384)


def test_cache_round_trip_and_reuse(tmp_path, minilm, monkeypatch):
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    vectors = np.eye(3, 4, dtype=np.float32)
    cache.put("m", ["a", "b", "c"], vectors)
    got = cache.get("m", ["c", "x", "a"], 4)
    assert np.array_equal(got[0], vectors[2]) and got[1] is None and np.array_equal(got[2], vectors[0])
    assert cache.get("other-model", ["a"], 4) == [None]

    monkeypatch.setenv("CONCLAVE_CACHE", str(tmp_path / "conclave"))
    encoder = SentenceEncoder(cache=True)
    encoder._model = minilm.model  # share the loaded weights; the cache is what is tested
    first = encoder.encode(["alpha question", "beta question", "alpha question"])
    assert len(encoder._cache) == 2  # the duplicate was embedded (and stored) once
    encoder._forward = None  # a second pass must come from the cache alone
    assert np.allclose(encoder.encode(["beta question", "alpha question"]), first[[1, 0]])


def test_build_encoder_from_config():
    encoder = build_encoder(EncoderConfig(batch_size=8, cache=False))
    assert isinstance(encoder, SentenceEncoder)
    assert encoder.name == "all-MiniLM-L6-v2" and encoder.batch_size == 8


def test_unknown_model_path_fails_clearly(tmp_path):
    encoder = SentenceEncoder(str(tmp_path / "no-such-model"), cache=False)
    with pytest.raises((RoutingError, OSError, ValueError)):
        encoder.encode(["hello"])
