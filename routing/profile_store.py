"""Per-expert validation outcomes in Redis, so every router replica rebuilds the same
profiles on start and on registry events.

One JSON value per expert at ``{ns}:outcomes:{expert}`` (its one-column outcome table) and
the set of stored experts at ``{ns}:outcomes``. Columns are merged on question id into
one table, NaN where an expert has no result.
"""

from __future__ import annotations

import json

import numpy as np

from routing.outcomes import OutcomeError, OutcomeTable


class ProfileStore:
    """Outcome columns by expert id in Redis (a redis-py client with string replies)."""

    def __init__(self, client, namespace: str = "conclave"):
        self.client, self.namespace = client, namespace

    def _key(self, expert: str) -> str:
        return f"{self.namespace}:outcomes:{expert}"

    @property
    def _index(self) -> str:
        return f"{self.namespace}:outcomes"

    def save(self, expert: str, outcomes: OutcomeTable) -> None:
        """Store ``expert``'s column of ``outcomes`` (replacing any earlier one)."""
        column = outcomes.with_experts([expert])
        scores = column.scores[:, 0]
        data = {
            "ids": column.ids,
            "texts": column.texts,
            "domains": column.domains,
            "scores": [None if np.isnan(s) else float(s) for s in scores],
            "answers": column.answers,
            "cost": column.cost.get(expert),
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self._key(expert), json.dumps(data))
        pipe.sadd(self._index, expert)
        pipe.execute()

    def load(self, expert: str) -> OutcomeTable:
        """``expert``'s stored one-column table; :class:`OutcomeError` when absent."""
        raw = self.client.get(self._key(expert))
        if raw is None:
            raise OutcomeError(f"no stored outcomes for expert {expert!r}")
        data = json.loads(raw)
        return OutcomeTable(
            ids=data["ids"],
            texts=data["texts"],
            domains=data["domains"],
            experts=[expert],
            scores=np.array([np.nan if s is None else s for s in data["scores"]],
                            dtype=np.float32).reshape(-1, 1),
            answers=data.get("answers"),
            cost={} if data.get("cost") is None else {expert: float(data["cost"])},
        )

    def experts(self) -> list[str]:
        """Experts with stored outcomes, sorted."""
        return sorted(self.client.smembers(self._index))

    def remove(self, expert: str) -> bool:
        """Delete ``expert``'s outcomes; True when there were some."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._key(expert))
        pipe.srem(self._index, expert)
        deleted, _ = pipe.execute()
        return bool(deleted)

    def load_all(self, experts: list[str] | None = None) -> OutcomeTable | None:
        """Every stored column (or those of ``experts``) merged on question id; None when
        nothing is stored."""
        names = self.experts() if experts is None else experts
        tables = [self.load(name) for name in names]
        return merge_columns(tables) if tables else None


def merge_columns(tables: list[OutcomeTable]) -> OutcomeTable:
    """Outcome tables joined on question id (first text/domain seen wins), experts side by
    side; NaN where an expert has no result for a question."""
    ids: dict[str, tuple[str, str]] = {}
    experts: list[str] = []
    for table in tables:
        for qid, text, domain in zip(table.ids, table.texts, table.domains, strict=True):
            ids.setdefault(qid, (text, domain))
        for name in table.experts:
            if name in experts:
                raise OutcomeError(f"expert {name!r} appears in two outcome tables")
            experts.append(name)
    row = {qid: i for i, qid in enumerate(ids)}
    scores = np.full((len(ids), len(experts)), np.nan, dtype=np.float32)
    cost: dict[str, float] = {}
    for table in tables:
        rows = [row[qid] for qid in table.ids]
        for j, name in enumerate(table.experts):
            scores[rows, experts.index(name)] = table.scores[:, j]
        cost.update(table.cost)
    return OutcomeTable(
        ids=list(ids),
        texts=[text for text, _ in ids.values()],
        domains=[domain for _, domain in ids.values()],
        experts=experts,
        scores=scores,
        cost=cost,
    )
