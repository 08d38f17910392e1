"""Config validation: each kind of mistake gives a message naming the bad thing."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import ConfigError, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def expert(expert_id: str, **fields) -> dict:
    return {"id": expert_id, "model": f"org/{expert_id}", **fields}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"routing": {"k": 2, "topk": 3}}, "unknown key 'routing.topk'"),
        ({"experts": [expert("a", flavour="x")]}, "unknown key 'experts.0.flavour'"),
        ({"experts": [expert("a"), expert("a")]}, "duplicate expert id 'a'"),
        (
            {"experts": [{"id": "l", "kind": "lora", "adapter": "org/a"}]},
            "kind 'lora' needs `base`",
        ),
        (
            {"experts": [{"id": "l", "kind": "lora", "base": "ghost", "adapter": "org/a"}]},
            "base 'ghost' is not a known model expert",
        ),
        (
            {"experts": [expert("a", model="/no/such/model")]},
            "path '/no/such/model' does not exist",
        ),
        ({"experts": [expert("Not A Slug")]}, "'Not A Slug' is not a slug"),
        ({"experts": [expert("a", pool="gpu")]}, "unknown pool 'gpu'"),
        ({"experts": [expert("a")], "routing": {"default_expert": "gpt-9"}},
         "routing.default_expert 'gpt-9' is not one of the experts"),
        ({"routing": {"k": "cascade", "cascade_threshold": 0.5}}, "routing.cascade_threshold"),
        ({"routing": {"k": 0}}, "routing.k"),
        ({"routing": {"strategy": "nosuch"}},
         "routing.strategy: unknown routing strategy 'nosuch'; valid: contrastive, glider, hybrid, knn"),
        ({"routing": {"strategies": {"knnn": {}}}}, "unknown routing strategy 'knnn'; valid:"),
        ({"routing": {"strategies": {"knn": {"kk": 5}}}}, "strategy 'knn': bad options"),
        ({"routing": {"strategies": {"knn": {"k": 0}}}}, "knn needs k >= 1"),
        ({"routing": {"strategies": {"glider": {"encoder": "x"}}}}, "come from the router"),
        ({"pools": [{"name": "p", "autoscaling": {"max_replica": 3}}]},
         "autoscaling: unknown Serve option(s) max_replica; known:"),
        ({"pools": [{"name": "p", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}]},
         "must be greater than or equal to min_replicas"),  # Serve's own check
        ({"pools": [{"name": "p", "deployment": {"health_check_period": 5}}]},
         "deployment: unknown Serve option(s) health_check_period"),
        ({"pools": [{"name": "p", "deployment": {"health_check_period_s": -1}}]},
         "health_check_period_s"),
        ({"pools": [{"name": "p", "deployment": {"num_replicas": 2}}]},
         "deployment: num_replicas is set from the pool's num_replicas"),
    ],
)
def test_bad_config_names_the_problem(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_lora_on_a_known_base_validates(tiny_lm, tiny_adapters):
    config = parse_config(
        {
            "experts": [
                expert("base", model=str(tiny_lm)),
                {
                    "id": "alpha",
                    "kind": "lora",
                    "base": "base",
                    "adapter": str(tiny_adapters["alpha"]),
                },
            ]
        }
    )
    assert [spec.kind for spec in config.experts] == ["model", "lora"]
    with pytest.raises(ConfigError, match="is for base"):  # made for another base
        parse_config({"experts": [expert("base"), {"id": "alpha", "kind": "lora", "base": "base",
                                                   "adapter": str(tiny_adapters["alpha"])}]})


@pytest.mark.parametrize("name", ["demo.yaml", "tiny.yaml", "hf-small.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(CONFIGS / name)
    assert config.pools and config.redis.url == "embedded"


@pytest.mark.parametrize(("name", "pool"), [("demo.yaml", "real"), ("tiny.yaml", "tiny")])
def test_offline_configs_build_their_pool_on_cpu(name, pool):
    config = load_config(CONFIGS / name)
    assert config.demo_pool == pool
    assert all(pool.num_cpus == 0 and pool.num_gpus == 0 for pool in config.pools)
    assert "default" in {pool.name for pool in config.pools}  # the demo experts' pool


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_per_strategy_options_reach_the_router(minilm):
    from experts.spec import ExpertSpec
    from routing.router import build_router

    config = parse_config({"routing": {"strategies": {"knn": {"k": 7, "temperature": 0.5}}}})
    specs = [ExpertSpec(id=name, model="org/tiny", examples=[f"a question on {name}"] * 2)
             for name in ("alpha", "beta")]
    router = build_router(config, specs, None, encoder=minilm)
    knn = router.strategies["knn"]
    assert (knn.k, knn.temperature) == (7, 0.5)


def test_deploy_render_refuses_an_unknown_strategy(tmp_path):
    from click.testing import CliRunner

    from cluster.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("routing:\n  strategy: nosuch\n")
    result = CliRunner().invoke(main, ["deploy", "render", "--config", str(bad)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "unknown routing strategy 'nosuch'; valid:" in lines[0]


def test_tracing_is_off_by_default_and_checks_its_exporter():
    assert parse_config({}).tracing.enabled is False
    assert parse_config({}).serving.shutdown_grace_s == 30
    with pytest.raises(ConfigError, match="needs tracing.file"):
        parse_config({"tracing": {"enabled": True, "exporter": "file"}})
    with pytest.raises(ConfigError, match="sampling_ratio"):
        parse_config({"tracing": {"sampling_ratio": 1.5}})
    traced = parse_config({"tracing": {"enabled": True, "exporter": "memory",
                                       "sampling_ratio": 0.25}})
    assert traced.tracing.sampling_ratio == 0.25


def test_serve_options_pass_through_as_serve_takes_them():
    from cluster.serve.app import pool_options

    pool = parse_config({"pools": [{
        "name": "p", "autoscaling": {"max_replicas": 3, "upscale_delay_s": 5},
        "deployment": {"health_check_period_s": 2, "max_queued_requests": 50}}]}).pools[0]
    options = pool_options(pool)
    assert options["autoscaling_config"] == {"target_ongoing_requests": 1, "max_replicas": 3,
                                             "upscale_delay_s": 5}
    assert options["health_check_period_s"] == 2 and options["max_queued_requests"] == 50
    assert pool.most_replicas == 3 and "num_replicas" not in options
