"""Conversation affinity for expert pools: Serve's request router (``RequestRouter``) with
one preference added to its power-of-two choice.

A conversation's turns share their beginning (the system message and the first user
message), so the replica that served the previous turn holds that prefix in its vLLM
prefix cache. This router remembers, per engine (the multiplexed model id) and
conversation beginning, the replica that took the last turn, and sends the next turn
there while that replica is alive and has room (its queue below ``max_queue_fraction`` of
``max_ongoing_requests``). Otherwise, and on a retry after that replica refused, it
routes as Serve always does (power of two choices, multiplexed models first), and the
conversation moves to the replica chosen.

The map is the router's own (one per deployment handle, i.e. per gateway replica), bounded
to ``max_conversations`` (least recently used dropped). Serve's built-in
``PrefixCacheAffinityRouter`` (ray.llm) keys on whole prompt text in a shared prefix-tree
actor; Conclave's prompts are chat messages batched per engine, so the key here is the
conversation's beginning, kept locally with no extra actor on the request path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict

from ray.serve._private.request_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RunningReplica

log = logging.getLogger(__name__)


def conversation_key(prompt: object) -> str | None:
    """A digest of a chat prompt's beginning: its messages up to the first user message
    (None for a plain-text prompt, or one with no user message)."""
    if not isinstance(prompt, list):
        return None
    head = []
    for message in prompt:
        head.append([message.get("role"), message.get("content")])
        if message.get("role") == "user":
            blob = json.dumps(head, separators=(",", ":"), default=str)
            return hashlib.sha1(blob.encode()).hexdigest()[:20]
    return None


def request_key(pending: PendingRequest) -> str | None:
    """The affinity key of a pool call: its engine and the first row's conversation."""
    if not pending.args:
        return None
    rows = pending.args[0] if isinstance(pending.args[0], list) else [pending.args[0]]
    key = next((k for k in (conversation_key(getattr(row, "prompt", None)) for row in rows)
                if k), None)
    return key and f"{pending.metadata.multiplexed_model_id}|{key}"


class ConversationAffinityRouter(PowerOfTwoChoicesRequestRouter):
    """Power of two choices, but a conversation's next turn goes to the replica of its
    last turn while that replica is alive and has room."""

    def initialize_state(self, max_conversations: int = 10000,
                         max_queue_fraction: float = 0.75, **_):
        self._last: OrderedDict[str, ReplicaID] = OrderedDict()
        self._tried: OrderedDict[str, None] = OrderedDict()  # requests offered their replica
        self._max_conversations = max_conversations
        self._max_queue_fraction = max_queue_fraction
        log.info("conversation affinity on for %s", self._deployment_id)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None):
        preferred = self._preferred(candidate_replicas, pending_request)
        if preferred is not None:
            return [[preferred]]
        return await super().choose_replicas(candidate_replicas, pending_request)

    def _preferred(self, candidates: list[RunningReplica],
                   pending: PendingRequest | None) -> RunningReplica | None:
        key = request_key(pending) if pending is not None else None
        if key is None or key not in self._last:
            return None
        request_id = pending.metadata.internal_request_id
        if request_id in self._tried:  # refused once (full): route as usual now
            return None
        self._remember(self._tried, request_id, None)
        replica = next((r for r in candidates if r.replica_id == self._last[key]), None)
        if replica is None:  # gone
            return None
        queued = self._replica_queue_len_cache.get(replica.replica_id) or 0
        return replica if queued < self._max_queue_fraction * replica.max_ongoing_requests \
            else None

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        key = request_key(pending_request)
        if key is not None:
            self._remember(self._last, key, replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID):
        super().on_replica_actor_died(replica_id)
        for key in [k for k, r in self._last.items() if r == replica_id]:
            del self._last[key]

    def _remember(self, table: OrderedDict, key: str, value) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max_conversations:
            table.popitem(last=False)


def affinity_options(enabled: bool) -> dict:
    """The pool deployment's Serve options for conversation affinity (none when off)."""
    if not enabled:
        return {}
    from ray.serve.config import RequestRouterConfig

    return {"request_router_config": RequestRouterConfig(
        request_router_class=ConversationAffinityRouter)}
