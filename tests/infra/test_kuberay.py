"""The KubeRay manifests (infra/k8s/ray), offline. RayCluster and RayJob are not core Kubernetes kinds, so each pod
template they hold is validated as a core PodTemplate against the strict Kubernetes schema (as test_manifests does
for every other object), and the KubeRay fields around them against a schema of the fields Ember uses (no unknown
key passes). Then what no schema sees: the RayJob's entrypoint is an `ember` command the CLI accepts, on Ray; the
Ray version is the pinned one; every pod runs the flows image and mounts the shared data volume at /ember/data."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.infra.test_manifests import k8s_errors, load_all
from tests.infra.test_requirements import lock_parts

ROOT = Path(__file__).resolve().parents[2]
RAY_DIR = ROOT / "infra" / "k8s" / "ray"
DATA_CLAIM, DATA_MOUNT, IMAGE = "ember-ray-data", "/ember/data", "ember-flows:latest"

_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object"}  # checked by the Kubernetes schema (k8s_errors on a PodTemplate)
_HEAD = {
    "type": "object",
    "additionalProperties": False,
    "required": ["rayStartParams", "template"],
    "properties": {"rayStartParams": _PARAMS, "template": _TEMPLATE, "serviceType": {"type": "string"}},
}
_WORKER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "rayStartParams", "template"],
    "properties": {
        "groupName": {"type": "string", "pattern": "^[a-z0-9-]+$"},
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "rayStartParams": _PARAMS,
        "template": _TEMPLATE,
    },
}
_CLUSTER_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"],
    "properties": {
        "rayVersion": {"type": "string"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "headGroupSpec": _HEAD,
        "workerGroupSpecs": {"type": "array", "minItems": 1, "items": _WORKER},
    },
}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"const": "ember"}, "labels": _PARAMS},
    "additionalProperties": False,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "RayCluster": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {}, "metadata": _METADATA, "spec": _CLUSTER_SPEC},
    },
    "RayJob": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["entrypoint", "rayClusterSpec"],
                "properties": {
                    "entrypoint": {"type": "string"},
                    "shutdownAfterJobFinishes": {"type": "boolean"},
                    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                    "backoffLimit": {"type": "integer", "minimum": 0},
                    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                    "rayClusterSpec": _CLUSTER_SPEC,
                },
            },
        },
    },
}


def objects() -> list[dict[str, Any]]:
    return [d for p in sorted(RAY_DIR.glob("*.yaml")) for d in load_all(p)]


def ray_objects() -> list[dict[str, Any]]:
    return [d for d in objects() if d["apiVersion"].startswith("ray.io/")]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    return spec


def templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster_spec(doc)
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


def errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one KubeRay object: its own fields, then each pod template as a core PodTemplate."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    schema = SCHEMAS.get(doc.get("kind", ""))
    if schema is None:
        return [f"{where}: not a KubeRay kind Ember validates"]
    found = [
        f"{where}: {'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)
    ]
    if found:
        return found
    for i, template in enumerate(templates(doc)):
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{where}-{i}"}, "template": template}
        found += k8s_errors(pod)
    return found


def test_there_are_a_raycluster_and_a_rayjob() -> None:
    assert sorted(d["kind"] for d in ray_objects()) == ["RayCluster", "RayJob"]


@pytest.mark.parametrize("doc", ray_objects(), ids=lambda d: d["kind"])
def test_kuberay_objects_match_their_schemas(doc: dict[str, Any]) -> None:
    assert errors(doc) == []


def test_the_core_objects_beside_them_match_the_kubernetes_schemas() -> None:
    core = [d for d in objects() if not d["apiVersion"].startswith("ray.io/")]
    assert [d["kind"] for d in core] == ["PersistentVolumeClaim"]
    assert [e for d in core for e in k8s_errors(d)] == []


def _job() -> dict[str, Any]:
    return copy.deepcopy(next(d for d in ray_objects() if d["kind"] == "RayJob"))


def _typo_in_spec(d: dict[str, Any]) -> None:
    d["spec"]["shutdownAfterJobFinish"] = d["spec"].pop("shutdownAfterJobFinishes")


def _typo_in_pod(d: dict[str, Any]) -> None:
    container = cluster_spec(d)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")


def _replicas_as_text(d: dict[str, Any]) -> None:
    cluster_spec(d)["workerGroupSpecs"][0]["replicas"] = "2"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [(_typo_in_spec, "shutdownAfterJobFinish"), (_typo_in_pod, "volumeMount"), (_replicas_as_text, "replicas")],
    ids=["unknown-kuberay-field", "unknown-pod-field", "wrong-type"],
)
def test_a_broken_kuberay_manifest_fails(mutate: Any, field: str) -> None:
    doc = _job()
    mutate(doc)
    found = errors(doc)
    assert len(found) == 1 and field in found[0], found


def test_the_rayjob_runs_the_ranker_training_set_on_ray_through_the_cli() -> None:
    """The entrypoint parses as `ember features training-set` (typer/click, nothing run) with --engine ray."""
    import typer.main

    from cli.main import app

    argv = shlex.split(_job()["spec"]["entrypoint"])
    assert argv[:3] == ["ember", "features", "training-set"]
    group = typer.main.get_command(app)
    features = group.commands["features"]  # type: ignore[attr-defined]
    command = features.commands["training-set"]
    params = command.make_context("training-set", argv[3:]).params
    assert params["engine"] == "ray" and params["model"] == "ranker"
    assert str(params["data"]) == "data/synth" and str(params["out"]).startswith("data/")


def test_ray_version_image_and_shared_data_volume() -> None:
    runtime, _ = lock_parts()
    pinned = runtime["ray"].split("==")[1]
    claims = {d["metadata"]["name"] for d in objects() if d["kind"] == "PersistentVolumeClaim"}
    assert DATA_CLAIM in claims
    for doc in ray_objects():
        assert cluster_spec(doc)["rayVersion"] == pinned, doc["kind"]
        for template in templates(doc):
            pod = template["spec"]
            (container,) = pod["containers"]
            assert container["image"] == IMAGE
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
            assert [(volumes[n], path) for n, path in mounts.items()] == [(DATA_CLAIM, DATA_MOUNT)], doc["kind"]


def test_the_ray_yaml_names_the_shared_volume() -> None:
    """feature_store.ray.yaml says why every node needs data/ at one path; the manifests are where that holds."""
    text = (ROOT / "features" / "repo" / "feature_store.ray.yaml").read_text()
    assert "infra/k8s/ray" in text
    assert yaml.safe_load(text)["offline_store"]["type"] == "ray"
