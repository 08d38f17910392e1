"""ExpertCatalog: a process-local, always-current copy of the registry's experts.

Every deployment replica keeps one. It follows the registry's notifications
(:meth:`ExpertRegistry.watch`) and reloads the list on each change, so the replica's view
moves without a redeploy. Listeners hear ``(added specs, removed ids, version)``.

When Redis is unreachable the last good view stays in use (requests keep flowing); the
next notification or :meth:`refresh` catches up. A notification lost while a replica's
subscription reconnects (Redis restarted) is caught up too: every ``resync_s`` the catalog
compares the registry's version with its own and reloads when they differ.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from experts.errors import ExpertError, UnknownExpertError
from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec

log = logging.getLogger(__name__)

Listener = Callable[[list[ExpertSpec], list[str], int], None]


class ExpertCatalog:
    """Specs by id, kept in step with an :class:`ExpertRegistry`."""

    def __init__(self, registry: ExpertRegistry, resync_s: float = 5.0):
        self.registry = registry
        self.version = -1
        self.resync_s = resync_s
        self._specs: dict[str, ExpertSpec] = {}
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._watch = None
        self._stopped = threading.Event()

    def start(self) -> ExpertCatalog:
        """Subscribe, then load: a change made between the two is not missed."""
        self._watch = self.registry.watch(lambda _event: self.refresh())
        self.refresh()
        threading.Thread(target=self._resync, daemon=True, name="catalog-resync").start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    def _resync(self) -> None:
        while not self._stopped.wait(self.resync_s):
            try:
                behind = self.registry.version() != self.version
            except (redis.RedisError, OSError):
                continue  # Redis down: the last good view stays
            if behind:
                log.info("registry version moved without a notification; reloading")
                self.refresh()

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(added, removed, version)`` after every change seen."""
        self._listeners.append(listener)

    def refresh(self) -> bool:
        """Reload from the registry; False (and the old view kept) when it is unreachable."""
        with self._lock:
            try:
                version = self.registry.version()
                specs = {spec.id: spec for spec in self._list()}
            except (redis.RedisError, OSError) as err:
                log.warning("registry unreachable, keeping %d known experts: %s",
                            len(self._specs), type(err).__name__)
                return False
            added = [s for i, s in specs.items() if self._specs.get(i) != s]
            removed = [i for i in self._specs if i not in specs]
            self._specs, self.version = specs, version
        if added or removed:
            for listener in self._listeners:
                listener(added, removed, version)
        return True

    def _list(self) -> list[ExpertSpec]:
        specs = []
        for expert_id in self.registry.ids():
            try:
                specs.append(self.registry.get(expert_id))
            except UnknownExpertError:
                continue  # removed while we listed
            except ExpertError as err:  # e.g. its local path was deleted: skip, keep the rest
                log.warning("skipping expert %s: %s", expert_id, err)
        return specs

    def get(self, expert_id: str) -> ExpertSpec:
        spec = self._specs.get(expert_id)
        if spec is None:
            raise UnknownExpertError(expert_id, list(self._specs))
        return spec

    def is_live(self, expert_id: str) -> bool:
        return expert_id in self._specs

    def __contains__(self, expert_id: str) -> bool:
        return expert_id in self._specs

    def specs(self) -> list[ExpertSpec]:
        return list(self._specs.values())

    def ids(self) -> list[str]:
        return list(self._specs)
