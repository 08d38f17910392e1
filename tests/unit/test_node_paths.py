"""Local model paths are read on the node that loads them: a registered expert whose path is
missing where a replica runs stays listed, its load fails with a clear error, and the
gateway reports it unhealthy (not silently dropped)."""

from __future__ import annotations

import shutil

import pytest

from cluster.catalog import ExpertCatalog
from cluster.config import ConfigError, parse_config
from cluster.ops.metrics import ConclaveMetrics
from cluster.serve.messages import ExpertReply
from experts.errors import ExpertError
from experts.loader import ExpertLoader
from experts.redis_conn import connect
from experts.registry import ExpertRegistry
from experts.spec import ExpertSpec


@pytest.fixture()
def elsewhere(tiny_lm, tmp_path):
    """A model folder that exists when the expert is registered, then is gone (as on a
    node that lacks it)."""
    path = tmp_path / "model"
    shutil.copytree(tiny_lm, path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_path_missing_on_this_node_fails_the_load_not_the_listing(redis_url, elsewhere,
                                                                    tmp_path):
    registry = ExpertRegistry(connect(redis_url), namespace="paths")
    registry.add(ExpertSpec(id="far", model=str(elsewhere)))
    shutil.rmtree(elsewhere)

    catalog = ExpertCatalog(registry)
    catalog.refresh()
    assert catalog.ids() == ["far"]  # still listed: another node may have the path
    loader = ExpertLoader(catalog.get, [str(tmp_path)])
    with pytest.raises(ExpertError, match=r"local path '.*model' does not exist on this node"):
        loader.load("far")


def test_replicas_parse_the_config_without_checking_paths():
    data = {"experts": [{"id": "far", "model": "/only/on/the/gpu/nodes"}]}
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(data)  # where the config is written: checked
    assert parse_config(data, paths_on_load=True).experts[0].model == "/only/on/the/gpu/nodes"


def test_an_expert_whose_replica_reports_errors_is_unhealthy_until_it_answers():
    metrics = ConclaveMetrics()
    error = ExpertError("local path '/m' does not exist on this node (w1)")
    metrics.record_generation("default", "far", ExpertReply.failed("far", error))
    metrics.record_generation("default", "near", ExpertReply(text="ok", completion_tokens=1))
    assert metrics.unhealthy == {
        "far": "expert 'far': ExpertError: local path '/m' does not exist on this node (w1)"}
    assert b'conclave_expert_up{expert="far"} 0.0' in metrics.render()
    metrics.record_generation("default", "far", ExpertReply(text="ok", completion_tokens=1))
    assert metrics.unhealthy == {}
