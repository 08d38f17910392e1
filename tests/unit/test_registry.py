"""ExpertRegistry against the real embedded Redis."""

from __future__ import annotations

import queue
import threading

import pytest

from experts.errors import ExpertError, ExpertExistsError, UnknownExpertError
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec


def model(expert_id: str, **extra) -> ExpertSpec:
    return ExpertSpec(id=expert_id, model=f"org/{expert_id}", **extra)


def test_two_clients_see_each_other_and_the_notification(redis_url):
    writer = ExpertRegistry(connect(redis_url))
    reader = ExpertRegistry(connect(redis_url))
    events: queue.Queue = queue.Queue()
    handle = reader.watch(events.put)
    try:
        writer.add(model("general", description="all-rounder"))
        assert events.get(timeout=10) == {"op": "add", "id": "general", "version": 1}
        assert reader.get("general").description == "all-rounder"
        reader.remove("general")
        assert events.get(timeout=10) == {"op": "remove", "id": "general", "version": 2}
        assert writer.list() == []
    finally:
        handle.stop()
    handle.stop()  # idempotent


def test_version_bumps_and_listing_keeps_add_order(redis_url):
    registry = ExpertRegistry(connect(redis_url))
    assert registry.version() == 0
    assert registry.add(model("zeta")) == 1
    assert registry.add(model("alpha")) == 2
    assert [spec.id for spec in registry.list()] == ["zeta", "alpha"]
    assert registry.remove("zeta") == 3
    assert registry.version() == 3
    assert "alpha" in registry and "zeta" not in registry
    assert registry.registered(["zeta", "alpha", "nobody"]) == {"alpha"}
    assert registry.registered([]) == set()


def test_concurrent_adds_of_one_id_exactly_one_wins(redis_url):
    registries = [ExpertRegistry(connect(redis_url)) for _ in range(8)]
    start = threading.Barrier(len(registries))
    outcomes: list[str] = []

    def attempt(registry: ExpertRegistry, n: int) -> None:
        start.wait()
        try:
            registry.add(model("same", description=f"writer {n}"))
            outcomes.append("won")
        except ExpertExistsError as err:
            assert "'same'" in str(err)
            outcomes.append("lost")

    threads = [threading.Thread(target=attempt, args=(r, n)) for n, r in enumerate(registries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert registries[0].version() == 1


def test_survives_a_restart_of_the_client_process(redis_url):
    ExpertRegistry(connect(redis_url), namespace="app").add(model("kept"))
    fresh = ExpertRegistry(connect(redis_url), namespace="app")
    assert [spec.id for spec in fresh.list()] == ["kept"]
    assert ExpertRegistry(connect(redis_url), namespace="other").list() == []


def test_unknown_id_is_named(redis_url):
    registry = ExpertRegistry(connect(redis_url))
    registry.add(model("known"))
    with pytest.raises(UnknownExpertError) as err:
        registry.get("nope")
    assert str(err.value) == "unknown expert 'nope' (known: known)"
    with pytest.raises(KeyError):
        registry.remove("nope")


def test_lora_needs_a_registered_model_base(redis_url, tiny_adapters):
    registry = ExpertRegistry(connect(redis_url))
    lora = ExpertSpec(id="alpha", kind="lora", base="tiny", adapter=str(tiny_adapters["alpha"]))
    with pytest.raises(ExpertError, match="'tiny' is not a registered expert"):
        registry.add(lora)
    assert registry.version() == 0 and registry.list() == []
    registry.add(model("tiny"))
    registry.add(lora)
    with pytest.raises(ExpertError, match="used by alpha"):
        registry.remove("tiny")


def test_seed_adds_only_missing(redis_url):
    registry = ExpertRegistry(connect(redis_url))
    registry.add(model("a", description="first"))
    assert registry.seed([model("a", description="second"), model("b")]) == ["b"]
    assert registry.get("a").description == "first"
