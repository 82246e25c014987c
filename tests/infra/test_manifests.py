"""The deployment manifests, offline: every Kubernetes object against the Kubernetes JSON schemas (strict, from
`kubernetes-validate`), infra/compose.yaml against the compose-spec schema (vendored, infra/schemas), the Prefect
work-pool template and deployments against the flows, and the references between the files (Secrets, ConfigMaps,
ports, probes). Each validator is also shown a broken copy, so a validator that accepts everything fails here."""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
COMPOSE = INFRA / "compose.yaml"
COMPOSE_SCHEMA = INFRA / "schemas" / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"  # infra/schemas/README.md
POOL_TEMPLATE = INFRA / "prefect-k8s-pool.json"
PREFECT_K8S = INFRA / "prefect-k8s.yaml"
# The oldest Kubernetes the manifests target: autoscaling/v2 and policy/v1 are GA there, and the schemas are strict
# (an unknown field is an error, not a silently ignored typo).
K8S_VERSION = "1.33.0"
# Names of variables whose value is a secret: a literal value in a manifest or in compose is a leak.
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY|AUTH_STRING", re.IGNORECASE)
WORKLOADS = ("Deployment", "StatefulSet", "Job")
PLACEHOLDER = r"\{\{ (\w+) \}\}"  # a Prefect job-template variable


# Validators: each returns the errors it found, as "where: what" lines, so the tests can show them --------------------


def k8s_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one Kubernetes object (empty when it is valid)."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.absolute_path)
        return [f"{where}: {path}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"{where}: {err.message}"]
    return []


def k8s_file_errors(path: Path) -> list[str]:
    return [e for doc in load_all(path) for e in k8s_errors(doc)]


def compose_errors(path: Path) -> list[str]:
    """compose-spec errors of a compose file (empty when it is valid)."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    doc = yaml.safe_load(path.read_text())
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in load_all(p)]


def find(kind: str, name: str) -> dict[str, Any]:
    hits = [d for _, d in objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def walk(node: Any) -> Iterator[Any]:
    """Every dict and list inside a parsed YAML/JSON document, depth first."""
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def module_constant(path: Path, name: str) -> str:
    """A module-level string constant, read without importing the module (serving imports bentoml)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            return node.value.value
    raise AssertionError(f"{path}: no constant {name}")


def configmap_file(name: str, key: str) -> str:
    text: str = find("ConfigMap", name)["data"][key]
    return text


# Schema validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_match_the_kubernetes_schemas(path: Path) -> None:
    assert load_all(path), f"{path}: no objects"
    assert k8s_file_errors(path) == []


def test_compose_file_matches_the_compose_spec() -> None:
    assert compose_errors(COMPOSE) == []


def test_vendored_compose_schema_is_the_recorded_one() -> None:
    assert hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest() == COMPOSE_SCHEMA_SHA256
    assert (INFRA / "schemas" / "LICENSE.compose-spec").is_file()


def _mutated_serving(tmp_path: Path, mutate: Any) -> Path:
    docs = load_all(K8S / "serving.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    mutate(deployment)
    out = tmp_path / "serving.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    return out


def _rename_probe(d: dict[str, Any]) -> None:
    container = pod_spec(d)["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")  # a typo a non-strict schema would ignore


def _port_as_text(d: dict[str, Any]) -> None:
    pod_spec(d)["containers"][0]["ports"][0]["containerPort"] = "3000"


def _no_image_no_name(d: dict[str, Any]) -> None:
    del pod_spec(d)["containers"][0]["name"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [(_rename_probe, "readinessProbes"), (_port_as_text, "containerPort"), (_no_image_no_name, "name")],
    ids=["unknown-field", "wrong-type", "missing-required"],
)
def test_a_broken_kubernetes_manifest_fails(tmp_path: Path, mutate: Any, field: str) -> None:
    errors = k8s_file_errors(_mutated_serving(tmp_path, mutate))
    assert len(errors) == 1 and field in errors[0], errors


def test_a_broken_hpa_fails(tmp_path: Path) -> None:
    docs = load_all(K8S / "serving.yaml")
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "60%"
    assert any("averageUtilization" in e for e in k8s_errors(hpa))
    hpa["apiVersion"] = "autoscaling/v9"
    assert any("Couldn't find schema" in e for e in k8s_errors(hpa))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (
            lambda c: c["services"]["redis"].update(
                healthcheck={"test": ["CMD", "redis-cli", "ping"], "intervall": "5s"}
            ),
            "intervall",
        ),
        (lambda c: c["services"]["ember"].update(ports=3000), "ports"),
        (lambda c: c["services"]["postgres"].update(restart_policy="always"), "restart_policy"),
        (lambda c: c.update(service={}), "service"),
    ],
    ids=["healthcheck-typo", "ports-not-a-list", "unknown-service-key", "unknown-top-level-key"],
)
def test_a_broken_compose_file_fails(tmp_path: Path, edit: Any, field: str) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    edit(compose)
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(compose))
    errors = compose_errors(broken)
    assert errors and any(field in e for e in errors), errors


# What the schemas cannot see: the references between objects and files ---------------------------------------------


def test_no_secret_is_inlined() -> None:
    """Secrets are referenced (secretKeyRef, envFrom), never defined in a manifest or given a literal value."""
    assert not [d for _, d in objects() if d["kind"] == "Secret"], "a Secret object belongs out of band"
    docs: list[Any] = [d for _, d in objects()] + [json.loads(POOL_TEMPLATE.read_text())]
    for node in (n for doc in docs for n in walk(doc)):
        if isinstance(node, dict) and isinstance(node.get("name"), str) and SECRET_NAME.search(node["name"]):
            assert "value" not in node, f"literal secret {node['name']}: use valueFrom.secretKeyRef"
    for service, spec in yaml.safe_load(COMPOSE.read_text())["services"].items():
        for name, value in (spec.get("environment") or {}).items():
            if SECRET_NAME.search(name):
                assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*|:-)?\}", str(value)), f"{service}.{name}: not from env"
        url = (spec.get("environment") or {}).get("PREFECT_API_DATABASE_CONNECTION_URL", "")
        assert "${POSTGRES_PASSWORD" in url or not url, f"{service}: database password must be interpolated"


def test_referenced_secrets_and_configmaps_are_the_documented_ones() -> None:
    readme = (INFRA / "README.md").read_text()
    secrets, configmaps = set(), set()
    docs: list[Any] = [d for _, d in objects()] + [json.loads(POOL_TEMPLATE.read_text())]
    for node in (n for doc in docs for n in walk(doc)):
        if isinstance(node, dict):
            for key in ("secretKeyRef", "secretRef"):
                if key in node:
                    secrets.add(node[key]["name"])
            if "configMap" in node and isinstance(node["configMap"], dict):
                configmaps.add(node["configMap"]["name"])
    assert secrets == {"ember-postgres", "ember-serving", "ember-prefect", "ember-dvc-s3"}
    for secret in secrets:
        assert f"kubectl -n ember create secret generic {secret}" in readme, f"{secret}: creation not documented"
    defined = {d["metadata"]["name"] for _, d in objects() if d["kind"] == "ConfigMap"}
    assert configmaps <= defined, configmaps - defined


def test_every_object_is_in_the_ember_namespace() -> None:
    for path, doc in objects():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "ember", f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"


def test_services_select_a_workload_and_name_its_ports() -> None:
    workloads = [d for _, d in objects() if d["kind"] in WORKLOADS]
    for _, svc in ((p, d) for p, d in objects() if d["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        matches = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service/{svc['metadata']['name']} selects {len(matches)} workloads"
        ports = {p["name"] for c in pod_spec(matches[0])["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service/{svc['metadata']['name']}: no port {port['targetPort']}"


def test_serving_deployment_probes_resources_and_autoscaler() -> None:
    service = ROOT / "serving" / "service.py"
    deployment = find("Deployment", "ember")
    container = pod_spec(deployment)["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    env = {e["name"]: e for e in container["env"]}
    token_env = module_constant(ROOT / "serving" / "admin.py", "ADMIN_TOKEN_ENV")
    assert env[token_env]["valueFrom"]["secretKeyRef"]["name"] == "ember-serving"
    assert env[module_constant(service, "CONFIG_ENV")]["value"] == "/config/variants.yaml"
    hpa = find("HorizontalPodAutoscaler", "ember")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "ember")
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_shared_config_files_are_embedded_verbatim() -> None:
    """The ConfigMaps carry the same text compose mounts from infra/config and infra/postgres-init."""
    assert configmap_file("ember-feast", "feature_store.yaml") == (INFRA / "config" / "feature_store.yaml").read_text()
    assert configmap_file("ember-variants", "variants.yaml") == (INFRA / "config" / "variants.yaml").read_text()
    sql = (INFRA / "postgres-init" / "10-feast.sql").read_text()
    assert configmap_file("postgres-init", "10-feast.sql") == sql


def test_deployed_variants_config_loads_with_redis() -> None:
    from serving.ab import load_config

    config = load_config(INFRA / "config" / "variants.yaml")
    pipelines = [v.recommender for v in config.variants if v.recommender.kind == "pipeline"]
    assert pipelines
    for spec in pipelines:
        params = spec.params
        assert (params.online_store, params.redis) == ("redis", "redis:6379")
    assert str(config.exposure.path).startswith(str(find_mount("ember", "exposure")))


def find_mount(deployment: str, volume: str) -> Path:
    container = pod_spec(find("Deployment", deployment))["containers"][0]
    return Path(next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume))


def test_feast_config_is_a_sql_registry_on_postgres_with_env_secrets() -> None:
    config = yaml.safe_load((INFRA / "config" / "feature_store.yaml").read_text())
    assert config["registry"]["registry_type"] == "sql"
    assert config["registry"]["path"].startswith("postgresql+psycopg://${EMBER_PG_USER}:${EMBER_PG_PASSWORD}@")
    assert config["online_store"] == {"type": "redis", "connection_string": "${EMBER_REDIS}"}
    repo = yaml.safe_load((ROOT / "features" / "repo" / "feature_store.redis.yaml").read_text())
    assert config["project"] == repo["project"]
    assert config["entity_key_serialization_version"] == repo["entity_key_serialization_version"]


# Prefect: the Kubernetes work pool and its deployments --------------------------------------------------------------


def render_job_manifest(template: dict[str, Any]) -> dict[str, Any]:
    """The pool's Job manifest with every {{ variable }} replaced by its default (or a sample the worker would fill),
    as Prefect renders it before the worker adds its own environment."""
    props = template["variables"]["properties"]
    samples = {"name": "ember-pipeline-abc12", "labels": {}, "command": ["prefect", "flow-run", "execute"], "env": {}}

    def render(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: render(v) for k, v in node.items()}
        if isinstance(node, list):
            return [render(v) for v in node]
        if isinstance(node, str):
            whole = re.fullmatch(PLACEHOLDER, node)
            if whole:
                return value(whole.group(1))
            return re.sub(PLACEHOLDER, lambda m: str(value(m.group(1))), node)
        return node

    def value(var: str) -> Any:
        return samples[var] if var in samples else props[var]["default"]

    manifest: dict[str, Any] = render(copy.deepcopy(template["job_configuration"]["job_manifest"]))
    manifest["metadata"]["name"] = manifest["metadata"].pop("generateName") + "x"  # the API server appends one
    return manifest


def test_work_pool_template_renders_a_valid_job() -> None:
    template = json.loads(POOL_TEMPLATE.read_text())
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    used = set(re.findall(PLACEHOLDER, json.dumps(template["job_configuration"])))
    assert used <= template["variables"]["properties"].keys(), used - template["variables"]["properties"].keys()
    job = render_job_manifest(template)
    assert k8s_errors(job) == []
    pod = pod_spec(job)
    assert pod["serviceAccountName"] == "ember-flows"
    find("ServiceAccount", "ember-flows")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "feast-config")
    assert mount["mountPath"] == "/ember/features/repo/feature_store.redis.yaml"
    env_in_feast_yaml = set(re.findall(r"\$\{(\w+)\}", (INFRA / "config" / "feature_store.yaml").read_text()))
    assert env_in_feast_yaml <= {e["name"] for e in pod["containers"][0]["env"]}


def test_a_broken_work_pool_template_fails() -> None:
    template = json.loads(POOL_TEMPLATE.read_text())
    template["variables"]["properties"]["finished_job_ttl"]["default"] = "an hour"
    assert any("ttlSecondsAfterFinished" in e for e in k8s_errors(render_job_manifest(template)))


def _flow_parameters(entrypoint: str) -> set[str]:
    path, func = entrypoint.split(":")
    tree = ast.parse((ROOT / path).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
    return {a.arg for a in node.args.args}


def test_kubernetes_deployments_match_the_flows_and_the_pool() -> None:
    spec = yaml.safe_load(PREFECT_K8S.read_text())
    worker = pod_spec(find("Deployment", "prefect-worker"))["containers"][0]["command"]
    pool = worker[worker.index("--pool") + 1]
    assert worker[worker.index("--type") + 1] == "kubernetes"
    process = yaml.safe_load((ROOT / "flows" / "prefect.yaml").read_text())
    # Each Kubernetes deployment is one of flows/prefect.yaml's, moved to the pool (not every one needs to move).
    assert {d["entrypoint"] for d in spec["deployments"]} <= {d["entrypoint"] for d in process["deployments"]}
    assert process["definitions"].get("work_pool_k8s", {"name": pool})["name"] == pool
    for deployment in spec["deployments"]:
        assert deployment["work_pool"]["name"] == pool
        assert set(deployment["parameters"]) <= _flow_parameters(deployment["entrypoint"]), deployment["name"]
        assert deployment["parameters"]["online_store"] == "redis"
        steps = [next(iter(s.values())).get("script") for s in deployment.get("pull", spec["pull"])]
        assert "ember features apply --online-store redis" in steps, "the SQL registry must be applied first"


def test_compose_services_are_healthchecked_and_wired() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"redis", "postgres", "prefect-server", "prefect-worker", "ember", "evidently-ui"} <= services.keys()
    one_shot = {name for name, service in services.items() if service.get("restart") == "no"}
    for name, service in services.items():
        assert "healthcheck" in service or name in one_shot, f"{name}: no healthcheck"
        for dep, cond in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert dep in services and cond["condition"] == wanted, f"{name} -> {dep}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is exposed beyond loopback"
    ember = services["ember"]["environment"]
    assert module_constant(ROOT / "serving" / "admin.py", "ADMIN_TOKEN_ENV") in ember
    assert "/readyz" in " ".join(services["ember"]["healthcheck"]["test"])
    assert services["evidently-ui"]["command"][:2] == ["ember", "dashboards"]
    worker_env = services["prefect-worker"]["environment"]
    env_in_feast_yaml = set(re.findall(r"\$\{(\w+)\}", (INFRA / "config" / "feature_store.yaml").read_text()))
    assert env_in_feast_yaml <= worker_env.keys()
