"""Security rules that need no Ray: remote code runs only when the expert spec allows it,
and the Redis password never reaches a log line while Redis is unreachable."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from conftest import REDIS_PASSWORD

from experts.errors import ExpertError
from experts.loader import EngineChoice, ExpertLoader
from experts.redis_conn import redact
from experts.spec import ExpertSpec

PROBE = '''
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import LlamaConfig, LlamaForCausalLM

class ProbeConfig(LlamaConfig):
    model_type = "conclave_probe"

class ProbeForCausalLM(LlamaForCausalLM):
    config_class = ProbeConfig
'''


@pytest.fixture()
def remote_code_model(tiny_lm, tmp_path):
    """The tiny LM re-labelled as a custom architecture whose code (probe.py) leaves a
    marker file when it is executed."""
    folder = shutil.copytree(tiny_lm, tmp_path / "remote-code-model")
    marker = tmp_path / "remote-code-ran"
    (folder / "probe.py").write_text(PROBE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="conclave_probe", architectures=["ProbeForCausalLM"],
                  auto_map={"AutoConfig": "probe.ProbeConfig",
                            "AutoModelForCausalLM": "probe.ProbeForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


@pytest.mark.parametrize("trusted", [False, True])
def test_remote_code_runs_only_when_the_spec_says_so(remote_code_model, tmp_path, trusted):
    folder, marker = remote_code_model
    spec = ExpertSpec(id="probe", model=str(folder), trust_remote_code=trusted)
    loader = ExpertLoader(lambda _id: spec, [str(tmp_path)], engines=EngineChoice(engine="hf"))
    if trusted:
        engine = loader.load("probe")
        assert type(engine.model).__name__ == "ProbeForCausalLM"
        assert marker.exists()
    else:
        with pytest.raises(ExpertError, match="does not load"):
            loader.load("probe")
        assert not marker.exists()


def test_specs_do_not_trust_remote_code_by_default():
    assert ExpertSpec(id="x", model="org/x").trust_remote_code is False


def test_redact_hides_redis_passwords():
    for url in (f"redis://:{REDIS_PASSWORD}@db:6379/0",
                f"rediss://admin:{REDIS_PASSWORD}@db:6380",
                f"unix://:{REDIS_PASSWORD}@/run/redis.sock"):
        assert REDIS_PASSWORD not in redact(url)
        assert "***" in redact(url)
    assert redact("redis://db:6379/0") == "redis://db:6379/0"


def test_redis_password_stays_out_of_logs_while_redis_is_down(restartable_redis, caplog):
    from cluster.catalog import ExpertCatalog
    from experts.redis_conn import connect
    from experts.registry import ExpertRegistry
    from routing.cache.redis_cache import RedisPatternCache
    from routing.options import RouteOptions

    url = restartable_redis.url
    cache = RedisPatternCache(url, namespace="sec")
    catalog = ExpertCatalog(ExpertRegistry(connect(url), namespace="sec")).start()
    restartable_redis.stop()
    with caplog.at_level(logging.DEBUG):
        assert catalog.refresh() is False
        assert cache.lookup("a question", _vector(), 0, RouteOptions()) is None
    catalog.stop()
    restartable_redis.start()
    assert "unreachable" in caplog.text
    assert REDIS_PASSWORD not in caplog.text


def _vector():
    import numpy as np

    vector = np.ones(8, dtype=np.float32)
    return vector / np.linalg.norm(vector)
