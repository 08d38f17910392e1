"""The generated Serve configs against Ray's own schema and ``build_app``'s arg validation.

Imports Ray (hence integration) but starts no cluster: ``ServeDeploySchema`` is what
``serve run``/``serve deploy`` and KubeRay's dashboard agent parse the config with.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from cluster.config import ConfigError
from cluster.deploy.render import ARTIFACTS, TARGETS, read_block

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray


def app_module():
    """cluster.serve.app, skipping only while the file does not exist (a broken import fails)."""
    if not (ROOT / "cluster" / "serve" / "app.py").exists():
        pytest.skip("cluster/serve/app.py not written yet")
    return importlib.import_module("cluster.serve.app")


def committed_serve_config(target: str) -> dict:
    artifact = ARTIFACTS[target][0]  # the serve config comes first for every target
    text = (ROOT / artifact.path).read_text()
    return read_block(text, "serveConfigV2") if target == "k8s" else yaml.safe_load(text)


@pytest.mark.parametrize("target", TARGETS)
def test_committed_serve_configs_parse_with_rays_schema(target):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(committed_serve_config(target))
    (app,) = schema.applications
    assert app.import_path == "cluster.serve.app:build_app"
    assert app.route_prefix == "/"


def test_rays_schema_refuses_an_app_without_import_path():
    # Ray's schema ignores unknown keys (a misspelled optional field passes), which is why the
    # serve configs are generated and drift-checked rather than edited by hand.
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    config = committed_serve_config("compose")
    config["applications"][0]["import_pth"] = config["applications"][0].pop("import_path")
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate(config)


@pytest.mark.parametrize("target", TARGETS)
def test_build_app_refuses_unknown_args(target):
    args = committed_serve_config(target)["applications"][0]["args"]
    with pytest.raises((ConfigError, ValueError), match="bogus"):
        app_module().build_app(args | {"bogus": True})


def test_build_app_binds_the_k8s_args_without_starting_ray(redis_url):
    """The committed k8s args build a bound app; only Redis is swapped for the test's."""
    import ray
    from ray.serve import Application

    args = committed_serve_config("k8s")["applications"][0]["args"]
    ray_was_up = ray.is_initialized()  # other tests of the session may have started it
    # The test's Redis is a local socket, which an autoscaled (multi-node) app refuses; and
    # the session's local Ray, when up, has no GPU worker group for the placement check.
    serving = args["serving"] | {"autoscaling_nodes": False, "resources": {}}
    pools = [pool | {"num_gpus": 0, "resources": {}, "accelerator_type": None}
             for pool in args["pools"]]
    routing = args["routing"] | {"resources": {}}
    app = app_module().build_app(args | {"redis": {"url": redis_url}, "serving": serving,
                                         "pools": pools, "routing": routing})
    assert isinstance(app, Application)
    assert ray.is_initialized() == ray_was_up


def test_build_app_refuses_a_node_local_redis_for_an_autoscaled_cluster(redis_url):
    args = committed_serve_config("k8s")["applications"][0]["args"]
    with pytest.raises(ConfigError, match="multi-node cluster .nodes joining later"):
        app_module().build_app(args | {"redis": {"url": redis_url}})
