"""k8s/ validates offline, strictly, as `kubectl apply --validate=strict` would.

RayService: the KubeRay CRD's v1 openAPIV3Schema with unknown fields rejected. Core objects:
the `kubernetes-validate` package (strict). Cross references (Secret, ConfigMap, Redis Service)
resolve, and the serveConfigV2 args go through the real config model.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.config import ConfigError, parse_config
from cluster.deploy.render import APP_IMPORT_PATH

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CRD = ROOT.parent / "shared" / "schemas" / "ray.io_rayservices.yaml"
K8S_VERSION = "1.33.0"
_SCHEMA_MAPS = ("properties", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf")


def strict(node: dict) -> dict:
    """A copy of a structural schema in which every object refuses fields it does not declare,
    unless it allows them (``additionalProperties``, ``x-kubernetes-preserve-unknown-fields``)."""
    out = dict(node)
    for key in _SCHEMA_MAPS:
        if key in node:
            out[key] = {name: strict(sub) for name, sub in node[key].items()}
    for key in _SCHEMA_LISTS:
        if key in node:
            out[key] = [strict(sub) for sub in node[key]]
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            out[key] = strict(node[key])
    open_object = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and not open_object:
        out["additionalProperties"] = False
    return out


def object_meta_schema() -> dict:
    """ObjectMeta's field names from kubernetes-validate (the CRD leaves metadata untyped)."""
    version = f"v{K8S_VERSION}-local-strict"
    ref = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/{version}/_definitions.json", K8S_VERSION
    )
    meta = ref["$defs"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
    names = {"type": "object", "additionalProperties": {"type": "string"}}
    props = {name: {} for name in meta["properties"]} | {"labels": names, "annotations": names}
    return {"type": "object", "properties": props, "additionalProperties": False}


@functools.cache
def rayservice_validator() -> jsonschema.Draft7Validator:
    if not CRD.exists():
        pytest.skip(f"CRD not found at {CRD}")
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(v1["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = object_meta_schema()
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return jsonschema.Draft7Validator(schema)


def rayservice_errors(doc: dict) -> list[str]:
    errors = rayservice_validator().iter_errors(doc)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def by_kind(kind: str) -> list[dict]:
    return [doc for doc in manifests() if doc["kind"] == kind]


def rayservice() -> dict:
    (service,) = by_kind("RayService")
    return service


def pod_specs(service: dict) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def test_every_rayservice_validates_strictly_against_the_crd():
    services = by_kind("RayService")
    assert services, "no RayService in k8s/"
    for service in services:
        assert service["apiVersion"] == "ray.io/v1"
        assert rayservice_errors(service) == []


@pytest.mark.parametrize(
    "path, field",
    [
        (("spec",), "rayClusterConfg"),  # misspelled top-level field
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0), "replica"),
        (
            ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0),
            "imagePullPolicyy",
        ),
        (("metadata",), "lables"),
    ],
)
def test_a_misspelled_rayservice_field_is_caught(path, field):
    broken = copy.deepcopy(rayservice())
    node = broken
    for part in path:
        node = node[part]
    node[field] = node.get("replicas", 1) if field == "replica" else {}
    errors = rayservice_errors(broken)
    assert any(repr(field) in error for error in errors), errors


def test_a_wrong_type_in_a_rayservice_is_caught():
    broken = copy.deepcopy(rayservice())
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    assert rayservice_errors(broken)


def test_core_objects_validate_strictly_with_kubernetes_validate():
    core = [doc for doc in manifests() if doc["apiVersion"] != "ray.io/v1"]
    assert {doc["kind"] for doc in core} >= {"StatefulSet", "Service", "Secret", "ConfigMap"}
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_misspelled_core_field_is_caught():
    (statefulset,) = by_kind("StatefulSet")
    broken = copy.deepcopy(statefulset)
    broken["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_serve_config_args_pass_the_real_config_model():
    serve = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == APP_IMPORT_PATH
    config = parse_config(app["args"])
    assert config.redis.url.startswith("redis://")
    assert any(pool.num_gpus > 0 and pool.autoscaling for pool in config.pools)
    with pytest.raises(ConfigError, match="bogus"):
        parse_config(app["args"] | {"bogus": True})
    pools = copy.deepcopy(app["args"]["pools"])
    pools[0]["replica"] = 2
    with pytest.raises(ConfigError, match="replica"):
        parse_config(app["args"] | {"pools": pools})


def test_gpu_worker_group_autoscales_with_gpu_limits():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_references_resolve():
    """The Secret, ConfigMap and Redis Service the RayService and its args name exist."""
    secrets = {doc["metadata"]["name"]: doc for doc in by_kind("Secret")}
    configmaps = {doc["metadata"]["name"] for doc in by_kind("ConfigMap")}
    services = {doc["metadata"]["name"]: doc for doc in by_kind("Service")}
    for pod in pod_specs(rayservice()):
        assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} <= configmaps
        for env in pod["containers"][0]["env"]:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secrets[ref["name"]]["stringData"]
        names = {env["name"] for env in pod["containers"][0]["env"]}
        assert "CONCLAVE_ADMIN_TOKEN" in names
    serve = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    url = serve["applications"][0]["args"]["redis"]["url"]
    host, port = url.split("://", 1)[1].split("/", 1)[0].split(":")
    assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}


def test_kustomization_lists_every_manifest_but_the_placeholder_secret():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # secret.yaml is a reference only: applying it would reset the real token.
    assert listed == on_disk - {"secret.yaml"}
    assert all((K8S / name).exists() for name in listed)
    json.dumps(kustomization)  # plain data, no YAML-only types


def test_worker_groups_have_what_every_deployment_asks_for():
    """The pools' custom resources and GPUs are what the RayService's worker groups start
    with, and the router and gateway ask for what only the head has."""
    from cluster.deploy.placement import actor_options, replica_needs, unplaceable
    from cluster.deploy.render import group_resources, k8s_placement

    serve = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    config = parse_config(serve["applications"][0]["args"])
    assert k8s_placement(config, ROOT) == []
    groups = group_resources(rayservice())
    needs = {name: replica_needs(o) for name, o in actor_options(config).items()}
    for name, need in needs.items():
        hosts = [group for group, res in groups.items()
                 if unplaceable({name: need}, {group: res}) == []]
        assert hosts == (["head"] if name in ("router", "gateway") else ["gpu"]), (name, groups)
    stray = config.model_copy(update={"pools": [config.pools[0].model_copy(
        update={"resources": {"tpu-worker": 1.0}})]})
    [problem] = k8s_placement(stray, ROOT)
    assert "'pool-general' needs" in problem and "tpu-worker: 1" in problem
