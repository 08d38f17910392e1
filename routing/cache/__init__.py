"""Pattern caches: routing decisions remembered by query text and embedding.

``base.PatternCache`` is the contract, ``memory.MemoryPatternCache`` the in-process
backend, ``redis_cache.RedisPatternCache`` the shared one. :func:`build_pattern_cache`
makes the one a config asks for.
"""

from __future__ import annotations

from routing.cache.base import PatternCache, normalise_text, pattern_key


def build_pattern_cache(cfg, redis_url: str | None, *, namespace: str = "conclave",
                        retry_s: float = 5.0) -> PatternCache | None:
    """The cache a :class:`~cluster.config.PatternCacheConfig`-shaped ``cfg`` describes:
    None when disabled, in memory when ``redis_url`` is None, else in Redis."""
    if not cfg.enabled:
        return None
    if redis_url is None:
        from routing.cache.memory import MemoryPatternCache

        return MemoryPatternCache(
            similarity=cfg.similarity, ttl_s=cfg.ttl_s, store_answers=cfg.store_answers
        )
    from routing.cache.redis_cache import RedisPatternCache

    return RedisPatternCache(
        redis_url, namespace=namespace, similarity=cfg.similarity, ttl_s=cfg.ttl_s,
        store_answers=cfg.store_answers, retry_s=retry_s,
    )


__all__ = ["PatternCache", "build_pattern_cache", "normalise_text", "pattern_key"]
