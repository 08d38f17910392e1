"""Stored responses (``POST /v1/responses`` with ``store``): each response id keeps the
conversation so far and its session, in Redis (``<namespace>:response:<id>``), for a TTL
and up to a size; a later request names it in ``previous_response_id``."""

from __future__ import annotations

import json
import logging

import redis
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)
REDIS_ERRORS = (redis.RedisError, OSError)


class ResponsesConfig(BaseModel):
    """Stored responses (``serving.responses``)."""

    model_config = ConfigDict(extra="forbid")

    ttl_s: int = Field(86400, ge=1, description="Seconds a stored response can be continued.")
    max_bytes: int = Field(
        262144, ge=1024, description="Largest stored conversation (JSON bytes): beyond it "
        "the oldest messages are dropped; a single message over it is not stored.")


class StoredConversation(BaseModel):
    messages: list[dict] = Field(description="{role, content} of every turn, oldest first.")
    session: str | None = None


class ResponseStore:
    """Blocking Redis calls (run them off the event loop); errors are the caller's."""

    def __init__(self, client: redis.Redis, namespace: str, config: ResponsesConfig):
        self._client, self._prefix, self.config = client, f"{namespace}:response:", config

    def load(self, response_id: str) -> StoredConversation | None:
        raw = self._client.get(self._prefix + response_id)
        return None if raw is None else StoredConversation.model_validate_json(raw)

    def save(self, response_id: str, conversation: StoredConversation) -> bool:
        """Store it (the oldest messages dropped to fit ``max_bytes``); False: not even
        the last message fits, nothing stored."""
        messages = list(conversation.messages)
        while messages:
            blob = json.dumps({"messages": messages, "session": conversation.session})
            if len(blob.encode()) <= self.config.max_bytes:
                self._client.set(self._prefix + response_id, blob, ex=self.config.ttl_s)
                return True
            messages.pop(0)
        log.warning("response %s not stored: its last message is over %d bytes", response_id,
                    self.config.max_bytes)
        return False
