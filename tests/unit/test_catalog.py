"""ExpertCatalog catches up with a change whose notification it never got (its
subscription was down, e.g. while Redis restarted), by comparing registry versions."""

from __future__ import annotations

import time

from cluster.catalog import ExpertCatalog
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec


def test_a_missed_notification_is_caught_up_by_the_version_check(redis_url):
    registry = ExpertRegistry(connect(redis_url), namespace="cat")
    catalog = ExpertCatalog(registry, resync_s=0.1).start()
    catalog._watch.stop()  # the subscription is gone: no notification will arrive
    seen = []
    catalog.on_change(lambda added, removed, version: seen.append([s.id for s in added]))
    try:
        registry.add(ExpertSpec(id="late", model="org/late"))
        deadline = time.monotonic() + 10
        while "late" not in catalog and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "late" in catalog and seen == [["late"]]
        assert catalog.version == registry.version()
    finally:
        catalog.stop()
