"""cluster.deploy.render and `conclave deploy render`: the committed deployment files are exactly
what the configs generate, and drift or unsafe configs are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cluster.cli import main
from cluster.config import ConfigError, load_config, parse_config
from cluster.deploy.render import (
    ARTIFACTS,
    DEFAULT_CONFIGS,
    TARGETS,
    app_args,
    drift,
    read_block,
    replace_block,
    serve_config,
    write,
)

ROOT = Path(__file__).resolve().parents[2]


def config_for(target: str):
    return load_config(ROOT / DEFAULT_CONFIGS[target])


def copy_tree(tmp_path: Path, target: str) -> Path:
    for artifact in ARTIFACTS[target]:
        (tmp_path / artifact.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / artifact.path, tmp_path / artifact.path)
    return tmp_path


@pytest.mark.parametrize("target", TARGETS)
def test_committed_files_match_the_generated_ones(target):
    assert drift(config_for(target), target, ROOT) == []


@pytest.mark.parametrize("target", TARGETS)
def test_a_config_change_is_reported_then_written(tmp_path, target):
    root = copy_tree(tmp_path, target)
    data = app_args(config_for(target))
    data["routing"] = {"k": 5}
    changed = parse_config(data)
    assert drift(changed, target, root) == [a.path for a in ARTIFACTS[target]]
    write(changed, target, root)
    assert drift(changed, target, root) == []
    assert drift(config_for(target), target, root) != []


def test_rewriting_serve_config_v2_keeps_the_rest_of_the_manifest(tmp_path):
    original = (ROOT / "k8s" / "rayservice.yaml").read_text()
    body = "applications:\n- name: x\n  import_path: a:b\n"
    rewritten = replace_block(original, "serveConfigV2", body)
    assert read_block(rewritten, "serveConfigV2") == yaml.safe_load(body)
    old, new = yaml.safe_load(original), yaml.safe_load(rewritten)
    old["spec"].pop("serveConfigV2"), new["spec"].pop("serveConfigV2")
    assert old == new
    with pytest.raises(ConfigError):
        replace_block("kind: X\n", "serveConfigV2", body)


@pytest.mark.parametrize("target", TARGETS)
def test_args_round_trip_through_the_config_model(target):
    config = config_for(target)
    (app,) = serve_config(config, target)["applications"]
    assert app["import_path"] == "cluster.serve.app:build_app"
    assert parse_config(app["args"]) == config


@pytest.mark.parametrize(
    "change, message",
    [
        ({"redis": {"url": "embedded"}}, "network Redis"),
        ({"redis": {"url": "unix:///tmp/r.sock"}}, "network Redis"),
        ({"redis": {"url": "redis://:hunter2@redis:6379/0"}}, "CONCLAVE_REDIS_URL"),
        ({"serving": {"admin_token": "hunter2"}}, "CONCLAVE_ADMIN_TOKEN"),
    ],
)
def test_unsafe_configs_are_refused(change, message):
    config = parse_config(app_args(config_for("compose")) | change)
    with pytest.raises(ConfigError, match=message) as err:
        serve_config(config, "compose")
    assert "hunter2" not in str(err.value)


def test_unknown_target_is_refused():
    with pytest.raises(ConfigError, match="k8s, compose"):
        serve_config(config_for("k8s"), "swarm")


def test_cli_prints_serve_config_v2():
    result = CliRunner().invoke(
        main, ["deploy", "render", "--config", str(ROOT / "configs/k8s.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == serve_config(config_for("k8s"), "k8s")


def test_cli_check_fails_on_drift_and_write_fixes_it(tmp_path):
    root = copy_tree(tmp_path, "compose")
    stale = root / "configs" / "serve-compose.yaml"
    stale.write_text(stale.read_text().replace("max_replicas: 2", "max_replicas: 3"))
    args = [
        "deploy",
        "render",
        "--target",
        "compose",
        "--root",
        str(root),
        "--config",
        str(ROOT / DEFAULT_CONFIGS["compose"]),
    ]
    runner = CliRunner()
    checked = runner.invoke(main, [*args, "--check"])
    assert checked.exit_code == 1 and "configs/serve-compose.yaml" in checked.output
    assert runner.invoke(main, [*args, "--write"]).exit_code == 0
    assert runner.invoke(main, [*args, "--check"]).exit_code == 0
    assert runner.invoke(main, [*args, "--check", "--write"]).exit_code != 0


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("redis: {url: redis://r:6379/0}\npools: [{name: p, replica: 2}]\n")
    result = CliRunner().invoke(main, ["deploy", "render", "--config", str(bad)])
    assert result.exit_code == 1
    assert "unknown key 'pools.0.replica'" in result.output
