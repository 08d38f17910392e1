"""docker-compose.yml and the Dockerfile, checked offline (no Docker engine here).

The compose file validates against the Compose JSON schema; its services, ports, env file and
serve config agree with the Dockerfile, configs/compose.yaml and the config model.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from cluster.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"


@functools.cache
def compose_validator():
    if not SCHEMA.exists():
        pytest.skip(f"compose schema not found at {SCHEMA}")
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_errors(doc: dict) -> list[str]:
    errors = compose_validator().iter_errors(doc)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_compose_file_validates_against_the_compose_schema():
    assert compose_errors(compose()) == []


@pytest.mark.parametrize(
    "path, key",
    [(("services", "ray-head"), "healthchek"), (("services", "ray-worker", "deploy"), "replica")],
)
def test_a_misspelled_compose_key_is_caught(path, key):
    broken = copy.deepcopy(compose())
    node = broken
    for part in path:
        node = node[part]
    node[key] = 1
    errors = compose_errors(broken)
    assert any(repr(key) in error for error in errors), errors


def test_services_redis_head_workers_and_gpu_profile():
    services = compose()["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and "redis-data:/data" in redis["volumes"]
    assert "healthcheck" in redis
    head = services["ray-head"]
    assert {"8000:8000", "8265:8265"} <= set(head["ports"])
    assert "/healthz" in " ".join(head["healthcheck"]["test"])
    assert "ray start --head" in head["command"][-1]
    assert "ray-head:6379" in services["ray-worker"]["command"][-1]
    gpu = [s for s in services.values() if "gpu" in s.get("profiles", [])]
    assert gpu, "no service in the gpu profile"
    for service in gpu:
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_head_runs_the_generated_serve_config_against_compose_redis():
    services = compose()["services"]
    (path,) = re.findall(r"serve run .*?(configs/\S+\.yaml)", services["ray-head"]["command"][-1])
    serve = yaml.safe_load((ROOT / path).read_text())
    (app,) = serve["applications"]
    assert app["import_path"] == "cluster.serve.app:build_app"
    assert serve["http_options"]["port"] == 8000
    redis_host = app["args"]["redis"]["url"].split("://", 1)[1].split(":")[0]
    assert redis_host in services
    assert load_config(ROOT / "configs" / "compose.yaml").redis.url == app["args"]["redis"]["url"]


def test_admin_token_comes_from_a_git_ignored_env_file():
    for name, service in compose()["services"].items():
        if name.startswith("ray-"):
            assert service["env_file"] == ".env", name
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^CONCLAVE_ADMIN_TOKEN=", example, re.MULTILINE)
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env is not git-ignored"
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_compose_build_args_exist_in_the_dockerfile():
    declared = set(re.findall(r"^ARG (\w+)", dockerfile(), re.MULTILINE))
    for name, service in compose()["services"].items():
        args = set(service.get("build", {}).get("args", {}))
        assert args <= declared, f"{name}: unknown build args {args - declared}"


def test_dockerfile_base_torch_pin_user_and_healthcheck():
    text = dockerfile()
    first_from = text.index("\nFROM ")
    assert re.search(r"^ARG BASE_IMAGE=\S+", text[:first_from], re.MULTILINE)
    assert "FROM ${BASE_IMAGE}" in text
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_pin,) = [d for d in deps if d.startswith("torch==")]
    assert f"ARG TORCH_VERSION={torch_pin.removeprefix('torch==')}" in text
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    assert re.search(r"^HEALTHCHECK .*\n.*?/healthz", text, re.MULTILINE)
    assert re.search(r"^VOLUME .*hf", text, re.MULTILINE)
    assert not re.search(r"\.(safetensors|bin|pt|gguf)\b", text), "weights baked into the image"


def test_dockerfile_suits_kuberay_pods():
    """KubeRay's default probes call `wget` through bash, and it starts Ray with `bash -lc`,
    whose /etc/profile resets PATH: the venv must come back through /etc/profile.d."""
    text = dockerfile()
    assert re.search(r"apt-get install [^\n]*\bwget\b", text)
    assert re.search(r"PATH=\$VIRTUAL_ENV/bin:.*> /etc/profile\.d/\S+\.sh", text)


def test_prometheus_scrapes_the_gateway_and_grafana_loads_the_dashboard():
    services = compose()["services"]
    mounts = {name: dict(v.rsplit(":", 1)[0].split(":", 1) for v in services[name]["volumes"]
                         if v.startswith("./")) for name in ("prometheus", "grafana")}
    (prom_file,) = [src for src, dst in mounts["prometheus"].items() if dst.endswith(".yml")]
    scrape = yaml.safe_load((ROOT / prom_file).read_text())["scrape_configs"]
    (job,) = scrape
    assert job["metrics_path"] == "/metrics"
    head_port = services["ray-head"]["ports"][0].split(":")[-1]
    assert job["static_configs"][0]["targets"] == [f"ray-head:{head_port}"]
    grafana = {dst: ROOT / src for src, dst in mounts["grafana"].items()}
    provisioning = grafana["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "conclave.yaml").read_text())["providers"]
    dashboards = grafana[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "conclave.json").read_text())
    (source,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
