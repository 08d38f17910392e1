"""Conversation affinity (cluster/serve/affinity.py): the key of a pool call, and the
router's preference for the replica of the conversation's last turn, with its fallbacks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from cluster.serve.affinity import ConversationAffinityRouter, conversation_key, request_key
from cluster.serve.messages import ExpertRequest

pytest.importorskip("ray.serve")

FIRST = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
LATER = [*FIRST, {"role": "assistant", "content": "4"}, {"role": "user", "content": "Why?"}]


@dataclass
class Meta:
    multiplexed_model_id: str = "engine-a"
    internal_request_id: str = "r1"


@dataclass
class Pending:
    args: list
    metadata: Meta = field(default_factory=Meta)


@dataclass
class Replica:
    replica_id: str
    max_ongoing_requests: int = 4


def make_router() -> ConversationAffinityRouter:
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    router = ConversationAffinityRouter(deployment_id=DeploymentID("pool-default", "app"),
                                        handle_source=DeploymentHandleSource.UNKNOWN,
                                        use_replica_queue_len_cache=True)
    router.initialize_state(max_conversations=2)
    return router


def test_a_conversation_keeps_its_key_across_turns_and_engines_apart():
    assert conversation_key(FIRST) == conversation_key(LATER) is not None
    assert conversation_key("plain prompt") is None
    assert conversation_key([{"role": "system", "content": "x"}]) is None
    one = Pending([[ExpertRequest("math", LATER)]])
    other = Pending([ExpertRequest("code", FIRST)], Meta("engine-b"))
    assert request_key(one) != request_key(other)
    assert request_key(one).split("|")[1] == request_key(other).split("|")[1]


def test_the_next_turn_goes_to_the_last_turns_replica_while_it_has_room():
    router = make_router()
    a, b = Replica("a"), Replica("b")
    router.on_request_routed(Pending([ExpertRequest("math", FIRST)]), "b", None)
    chosen = asyncio.run(router.choose_replicas([a, b], Pending([ExpertRequest("m", LATER)])))
    assert chosen == [[b]]
    # a retry of the same request (the replica refused it) is routed as usual
    assert router._preferred([a, b], Pending([ExpertRequest("m", LATER)])) is None
    router._replica_queue_len_cache.update("b", 3)  # 3 of 4: over 0.75, saturated
    assert router._preferred([a, b], Pending([ExpertRequest("m", LATER)], Meta(
        internal_request_id="r2"))) is None


def test_a_gone_replica_or_a_forgotten_conversation_falls_back():
    router = make_router()
    a = Replica("a")
    router.on_request_routed(Pending([ExpertRequest("math", FIRST)]), "b", None)
    assert router._preferred([a], Pending([ExpertRequest("m", LATER)])) is None  # b is gone
    router.on_replica_actor_died("b")
    assert router._last == {}
    for n in range(3):  # bounded: the oldest conversation is forgotten
        prompt = [{"role": "user", "content": f"q{n}"}]
        router.on_request_routed(Pending([ExpertRequest("m", prompt)]), "a", None)
    assert len(router._last) == 2
