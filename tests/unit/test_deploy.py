"""Static checks of the deployment files (no Docker engine or Kubernetes cluster runs here).

docker-compose.yml is validated against the Compose Specification's JSON schema (vendored in
deploy/schemas), the Kubernetes manifests against the schemas of the `kubernetes-validate`
package, and both against vrec itself: every VREC_* variable is a real setting with a valid
value, the encoder service runs only the encode role on a GPU, the workers only recommend.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streams.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "docker-compose.yml"
K8S = sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml"))
SCHEMA = REPO_ROOT / "deploy" / "schemas" / "compose-spec.json"
DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"
PROMETHEUS = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
K8S_VERSION = "1.33"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in K8S:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _compose_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("VREC_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def _check_vrec_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    fields = set(Settings.model_fields)
    for key in env:
        assert key.startswith("VREC_"), key
        name = key.removeprefix("VREC_").lower()
        assert name in fields or name.startswith("topic_"), f"{key} is not a vrec setting"
    return _settings_from(env, monkeypatch)


def test_compose_matches_the_compose_spec(compose):
    assert _compose_errors(compose) == []


def test_compose_schema_check_catches_mistakes(compose):
    broken = copy.deepcopy(compose)
    broken["services"]["worker"]["deploy"]["replicas"] = "two"
    broken["services"]["encoder"]["depends_on"] = 5
    assert len(_compose_errors(broken)) == 2


def test_compose_services_are_vrec_roles(compose, monkeypatch):
    services = compose["services"]
    assert {"kafka", "qdrant", "encoder", "worker", "prometheus"} <= set(services)
    encoder = _check_vrec_env(services["encoder"]["environment"], monkeypatch)
    worker = _check_vrec_env(services["worker"]["environment"], monkeypatch)
    assert encoder.roles == {"encode"} and worker.roles == {"recommend"}
    assert encoder.app_id != worker.app_id, "the encoder has its own consumer group"
    assert encoder.device == "cuda" and encoder.store == worker.store == "qdrant"
    assert encoder.partitions == worker.partitions >= services["worker"]["deploy"]["replicas"]
    gpu = services["encoder"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["count"] >= 1
    # the build argument that selects onnxruntime-gpu exists in the Dockerfile
    args = re.findall(r"^ARG (\w+)", DOCKERFILE.read_text(), flags=re.M)
    assert set(services["encoder"]["build"]["args"]) <= set(args)
    assert services["encoder"]["build"]["args"]["ONNXRUNTIME"] == "onnxruntime-gpu"


def test_prometheus_scrapes_the_workers_metrics_port(compose):
    config = yaml.safe_load(PROMETHEUS.read_text())
    port = Settings.model_fields["web_port"].default
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["vrec-worker"]["dns_sd_configs"][0]["port"] == port
    assert jobs["vrec-encoder"]["static_configs"][0]["targets"] == [f"encoder:{port}"]
    volume = compose["services"]["prometheus"]["volumes"][0]
    assert (REPO_ROOT / volume.split(":")[0]).resolve() == PROMETHEUS.resolve()


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_k8s_manifests_match_the_kubernetes_schema(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_schema_check_catches_mistakes(manifests):
    hpa = next(d for d in manifests if d["kind"] == "HorizontalPodAutoscaler")
    broken = copy.deepcopy(hpa)
    broken["spec"]["maxReplicas"] = "eight"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_k8s_roles_scaling_and_metrics(manifests, monkeypatch):
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in manifests}
    config = by_kind[("ConfigMap", "vrec-config")]["data"]

    def container_env(kind: str, name: str) -> tuple[dict[str, Any], Settings]:
        pod = by_kind[(kind, name)]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        env = {**config, **{e["name"]: e["value"] for e in container["env"]}}
        port = container["ports"][0]["containerPort"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        return container, _check_vrec_env(env, monkeypatch)

    worker_c, worker = container_env("StatefulSet", "vrec-worker")
    encoder_c, encoder = container_env("Deployment", "vrec-encoder")
    assert worker.roles == {"recommend"} and encoder.roles == {"encode"}
    assert encoder.app_id != worker.app_id and encoder.device == "cuda"
    assert encoder_c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker_c["ports"][0]["containerPort"] == worker.web_port

    hpa = by_kind[("HorizontalPodAutoscaler", "vrec-worker")]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "vrec-worker",
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"] <= worker.partitions
    (metric,) = hpa["metrics"]
    name = metric["external"]["metric"]["name"]
    assert metric["external"]["metric"]["selector"]["matchLabels"]["topic"] == (
        worker.topics.full("user_events")
    )
    # the metric the HPA scales on is one the worker exports
    assert f'"{name}"' in (REPO_ROOT / "streams" / "metrics.py").read_text()


def test_settings_roles_are_validated():
    assert Settings(roles="recommend, encode").roles == {"encode", "recommend"}
    assert Settings().roles == {"encode", "recommend"}
    for bad in ("", "encoder", "encode,users"):
        with pytest.raises(ValueError, match="roles"):
            Settings(roles=bad)


def test_settings_roles_travel_to_workers(monkeypatch):
    from vrec_tools.harness import settings_env

    env = settings_env(Settings(roles="encode"))
    assert env["VREC_ROLES"] == "encode"
    assert _settings_from(env, monkeypatch).roles == {"encode"}
