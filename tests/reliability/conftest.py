"""Fixtures for the reliability tests: a Redis that can be stopped and started again."""

from __future__ import annotations

import tempfile

import pytest

REDIS_PASSWORD = "rel-redis-s3cret-pw"


@pytest.fixture()
def restartable_redis():
    """A password-protected Redis on its own socket, stopped at the end of the test."""
    from cluster.faults import RestartableRedis

    # A short folder: unix socket paths are limited to ~107 bytes.
    server = RestartableRedis(tempfile.mkdtemp(prefix="crel-"), password=REDIS_PASSWORD).start()
    yield server
    server.stop()
