"""Input checks and small profile helpers shared by the strategies (clear errors on bad input)."""

from __future__ import annotations

import numpy as np

from routing.errors import RoutingError
from routing.outcomes import OutcomeTable


def column_means(scores: np.ndarray) -> np.ndarray:
    """Mean score per expert column, NaN (no result) ignored; a column without results → 0."""
    counts = (~np.isnan(scores)).sum(axis=0)
    sums = np.nansum(scores, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def check_fit_inputs(
    outcomes: OutcomeTable, embeddings: np.ndarray, one_expert: str | None = None
) -> None:
    """Raise :class:`RoutingError` unless ``embeddings`` has one finite row per question and,
    for ``add_expert``, the table holds ``one_expert``."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != len(outcomes):
        raise RoutingError(
            f"need one embedding row per question: {len(outcomes)} questions, "
            f"embeddings of shape {embeddings.shape}"
        )
    if len(outcomes) == 0:
        raise RoutingError("no validation questions to build profiles from")
    if not np.isfinite(embeddings).all():
        raise RoutingError("embeddings contain NaN or inf")
    if one_expert is not None and one_expert not in outcomes.experts:
        raise RoutingError(f"outcomes have no column for expert {one_expert!r}")


def check_queries(texts: list[str], embeddings: np.ndarray, fitted: bool, name: str) -> None:
    """Raise :class:`RoutingError` on an unfitted strategy or mismatched queries."""
    if not fitted:
        raise RoutingError(f"{name}: not fitted (no experts); call fit() or add_expert() first")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise RoutingError(f"{name}: empty query")
    if np.asarray(embeddings).shape[0] != len(texts):
        raise RoutingError(f"{name}: {len(texts)} texts but {len(embeddings)} embeddings")
