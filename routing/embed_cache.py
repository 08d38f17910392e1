"""An on-disk embedding cache: (model name, sha1(text)) → float32 vector, in SQLite.

SQLite in WAL mode is safe across processes (router replicas, an eval next to a server),
so a 12k-question evaluation embeds each text once per model, ever.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS embeddings ("
    " model TEXT NOT NULL, key TEXT NOT NULL, vector BLOB NOT NULL,"
    " PRIMARY KEY (model, key))"
)
_CHUNK = 500  # SQLite's variable limit is ≥ 999; stay well under it


def text_key(text: str) -> str:
    """The cache key of one text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors by model and text hash. ``path`` defaults to ``cache_dir()/embeddings/cache.sqlite``."""

    def __init__(self, path: str | Path | None = None):
        if path is None:
            from experts.redis_conn import cache_dir

            path = cache_dir() / "embeddings" / "cache.sqlite"
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: safe across threads and forks, and cheap for SQLite.
        return sqlite3.connect(self.path, timeout=30.0)

    def get(self, model: str, texts: list[str], dim: int) -> list[np.ndarray | None]:
        """The cached vector of each text, or None where it is missing."""
        keys = [text_key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        conn = self._connect()
        try:
            for start in range(0, len(keys), _CHUNK):
                chunk = list(dict.fromkeys(keys[start:start + _CHUNK]))
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, vector FROM embeddings WHERE model = ? AND key IN ({marks})",
                    [model, *chunk],
                )
                for key, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.size == dim:  # a different dim means another model: ignore
                        found[key] = vector
        finally:
            conn.close()
        return [found.get(key) for key in keys]

    def put(self, model: str, texts: list[str], vectors: np.ndarray) -> None:
        """Store one vector per text (replacing any old one)."""
        rows = [
            (model, text_key(t), np.ascontiguousarray(v, dtype=np.float32).tobytes())
            for t, v in zip(texts, vectors, strict=True)
        ]
        conn = self._connect()
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)
        finally:
            conn.close()

    def __len__(self) -> int:
        conn = self._connect()
        try:
            return int(conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
        finally:
            conn.close()
