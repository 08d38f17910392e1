"""ExpertRegistry: the panel's experts, kept in Redis so every process sees one list.

Layout under ``{namespace}:experts``:
- ``...:specs``   hash id → spec JSON
- ``...:order``   sorted set id → version at which it was added (listing order)
- ``...:version`` counter bumped on every change
- ``...:events``  pub/sub channel: ``{"op": "add"|"remove", "id", "version"}``

Adds and removes are Lua scripts, so the check, the write, the version bump and the
notification happen as one step: of two concurrent adds of one id, exactly one wins.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable

import redis
from pydantic import ValidationError

from experts.errors import ExpertError, ExpertExistsError, UnknownExpertError
from experts.spec import PATHS_ON_LOAD, ExpertSpec

log = logging.getLogger(__name__)

# KEYS: specs, order, version. ARGV: channel, id, spec json, referenced ids...
_ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return {-1, ARGV[2]} end
for i = 4, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then return {-2, ARGV[i]} end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local version = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], version, ARGV[2])
redis.call('PUBLISH', ARGV[1], cjson.encode({op='add', id=ARGV[2], version=version}))
return {version, ARGV[2]}
"""

# KEYS: specs, order, version. ARGV: channel, id.
_REMOVE = """
if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then return -1 end
redis.call('ZREM', KEYS[2], ARGV[2])
local version = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[1], cjson.encode({op='remove', id=ARGV[2], version=version}))
return version
"""


class RegistryWatch:
    """A running change listener; :meth:`stop` ends it."""

    def __init__(self, pubsub, thread):
        self._pubsub = pubsub
        self._thread = thread

    def stop(self) -> None:
        """Stop listening and close the subscription. Idempotent."""
        if self._thread is not None:
            self._thread.stop()
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
            self._thread = None
            self._pubsub.close()


class ExpertRegistry:
    """Add, remove, get and list experts; follow changes with :meth:`watch`."""

    def __init__(self, client: redis.Redis, namespace: str = "conclave"):
        self.client = client
        self.namespace = namespace
        prefix = f"{namespace}:experts"
        self._keys = [f"{prefix}:specs", f"{prefix}:order", f"{prefix}:version"]
        self.channel = f"{prefix}:events"
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)

    def add(self, spec: ExpertSpec) -> int:
        """Register ``spec``; returns the new version.

        Raises :class:`ExpertExistsError` when the id is taken, :class:`ExpertError` when
        the base or a mixture member is not registered (or not of the right kind)."""
        self._check_kinds(spec)
        refs = [spec.base] if spec.base else []
        refs += spec.experts
        code, name = self._add(
            keys=self._keys, args=[self.channel, spec.id, spec.model_dump_json(), *refs]
        )
        name = _text(name)
        if code == -1:
            raise ExpertExistsError(f"expert {name!r} is already registered")
        if code == -2:
            raise ExpertError(f"expert {spec.id!r}: {name!r} is not a registered expert")
        return int(code)

    def remove(self, expert_id: str) -> int:
        """Unregister ``expert_id``; returns the new version. Refuses to remove a base
        that registered adapters or mixtures still sit on."""
        users = [s.id for s in self.list() if expert_id in (s.base, *s.experts)]
        if users:
            raise ExpertError(
                f"expert {expert_id!r} is used by {', '.join(users)}; remove those first"
            )
        version = self._remove(keys=self._keys, args=[self.channel, expert_id])
        if version == -1:
            raise UnknownExpertError(expert_id, self.ids())
        return int(version)

    def get(self, expert_id: str) -> ExpertSpec:
        """The spec of ``expert_id``; :class:`UnknownExpertError` when there is none."""
        raw = self.client.hget(self._keys[0], expert_id)
        if raw is None:
            raise UnknownExpertError(expert_id, self.ids())
        return _parse(expert_id, raw)

    def list(self) -> list[ExpertSpec]:
        """All experts, in the order they were added."""
        ids = self.ids()
        if not ids:
            return []
        raws = self.client.hmget(self._keys[0], ids)
        return [_parse(i, raw) for i, raw in zip(ids, raws, strict=True) if raw is not None]

    def ids(self) -> list[str]:
        """Registered ids, in the order they were added."""
        return [_text(i) for i in self.client.zrange(self._keys[1], 0, -1)]

    def __contains__(self, expert_id: str) -> bool:
        return bool(self.client.hexists(self._keys[0], expert_id))

    def registered(self, expert_ids: Iterable[str]) -> set[str]:
        """Those of ``expert_ids`` registered right now, in one round trip."""
        ids = list(expert_ids)
        pipe = self.client.pipeline(transaction=False)
        for expert_id in ids:
            pipe.hexists(self._keys[0], expert_id)
        return {e for e, found in zip(ids, pipe.execute(), strict=True) if found}

    def version(self) -> int:
        """Bumped on every add and remove; 0 for an empty, never-changed registry."""
        return int(self.client.get(self._keys[2]) or 0)

    def seed(self, specs: Iterable[ExpertSpec]) -> list[str]:
        """Add the specs whose ids are not registered yet (in order); returns the added ids."""
        added = []
        for spec in specs:
            try:
                self.add(spec)
            except ExpertExistsError:
                continue
            added.append(spec.id)
        return added

    def watch(self, callback: Callable[[dict], None]) -> RegistryWatch:
        """Call ``callback(event)`` from a background thread on every change.

        Returns once the subscription is live, so changes made afterwards are seen. When
        Redis goes away the watch keeps retrying; once it is back (subscription renewed)
        it delivers ``{"op": "resync"}``, since changes may have been missed meanwhile."""
        pubsub = self.client.pubsub()
        pubsub.subscribe(**{self.channel: lambda message: _deliver(callback, message)})
        # Wait for the server's SUBSCRIBE acknowledgement: from then on no change is missed.
        if pubsub.get_message(timeout=5.0) is None:
            pubsub.close()
            raise ExpertError(f"registry: could not subscribe to {self.channel!r}")
        thread = pubsub.run_in_thread(sleep_time=0.2, daemon=True,
                                      exception_handler=_Reconnect(callback))
        return RegistryWatch(pubsub, thread)

    def _check_kinds(self, spec: ExpertSpec) -> None:
        if spec.kind == "model":
            return
        base = self._maybe_get(spec.base or "")
        if base is not None and base.kind != "model":
            raise ExpertError(f"expert {spec.id!r}: base {spec.base!r} is not a model expert")
        for member in spec.experts:
            other = self._maybe_get(member)
            if other is not None and (other.kind != "lora" or other.base != spec.base):
                raise ExpertError(
                    f"expert {spec.id!r}: {member!r} is not a lora expert on {spec.base!r}"
                )

    def _maybe_get(self, expert_id: str) -> ExpertSpec | None:
        raw = self.client.hget(self._keys[0], expert_id)
        return None if raw is None else _parse(expert_id, raw)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse(expert_id: str, raw) -> ExpertSpec:
    try:
        # Registered specs are shared by every node: a local path is checked by the node
        # that loads it (where it may be missing), not by every reader.
        return ExpertSpec.model_validate_json(raw, context=PATHS_ON_LOAD)
    except ValidationError as err:
        reason = err.errors()[0]["msg"].removeprefix("Value error, ")
        raise ExpertError(f"registered expert {expert_id!r} is no longer valid: {reason}") from None


def _deliver(callback: Callable[[dict], None], message: dict) -> None:
    try:
        callback(json.loads(message["data"]))
    except Exception:  # a bad callback must not end the listener
        log.exception("registry watch callback failed")


class _Reconnect:
    """The watch thread's error handler: on a lost connection, retry (the pubsub
    resubscribes on connect) and announce a resync; on anything else, stop."""

    def __init__(self, callback: Callable[[dict], None], retry_s: float = 0.5):
        self._callback = callback
        self._retry_s = retry_s
        self._lost = False

    def __call__(self, error, pubsub, thread) -> None:
        if not isinstance(error, redis.ConnectionError | redis.TimeoutError | OSError):
            log.warning("registry watch stopped: %s", error)
            thread.stop()
            return
        if not self._lost:
            log.warning("registry watch lost Redis (%s); retrying", type(error).__name__)
            self._lost = True
        time.sleep(self._retry_s)
        if pubsub.connection is None:  # the watch was stopped meanwhile
            return
        try:
            pubsub.connection.connect()  # runs pubsub.on_connect: subscribes again
        except (redis.RedisError, OSError):
            return  # still down: the thread calls get_message again and lands here
        log.info("registry watch reconnected")
        self._lost = False
        _deliver(self._callback, {"data": json.dumps({"op": "resync"})})
