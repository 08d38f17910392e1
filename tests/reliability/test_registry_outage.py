"""The registry's change notifications survive a Redis restart (real server stopped and
started again on the same socket): the watch reconnects, announces a resync, and later
changes arrive as before."""

from __future__ import annotations

import queue

from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec


def _drain_until(events: queue.Queue, wanted: dict, timeout_s: float = 30.0) -> list[dict]:
    seen = []
    while wanted not in seen:
        seen.append(events.get(timeout=timeout_s))
    return seen


def test_watch_resumes_after_redis_restart(restartable_redis):
    registry = ExpertRegistry(connect(restartable_redis.url), namespace="outage")
    events: queue.Queue = queue.Queue()
    watch = registry.watch(events.put)
    try:
        registry.add(ExpertSpec(id="before", model="org/before"))
        assert events.get(timeout=10)["id"] == "before"

        restartable_redis.stop()
        restartable_redis.start()

        assert {"op": "resync"} in _drain_until(events, {"op": "resync"})
        registry.add(ExpertSpec(id="after", model="org/after"))
        seen = _drain_until(events, {"op": "add", "id": "after", "version": 2})
        assert seen[-1]["id"] == "after"
        assert registry.ids() == ["before", "after"]  # the data outlived the restart
    finally:
        watch.stop()
