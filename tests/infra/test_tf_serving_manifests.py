"""infra/tf_serving: the real TF Serving wired like kiln-model-server. No Docker or cluster here, so the
Kubernetes manifests are validated against the API's own OpenAPI schemas (kubernetes-validate), the
compose file against the compose spec, and the server flags they share are run for real by
kiln-model-server, which takes TF Serving's flags."""

from __future__ import annotations

import copy
import json
from importlib.resources import files
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format

REPO = Path(__file__).resolve().parents[2]
TF_SERVING = REPO / "infra" / "tf_serving"
KUBERNETES_VERSION = "1.37.0"
REQUIRED_FLAGS = ("--model_config_file", "--model_config_file_poll_wait_seconds", "--port", "--rest_api_port")


def k8s_documents() -> list[dict]:
    kustomization = yaml.safe_load((TF_SERVING / "k8s" / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((TF_SERVING / "k8s" / name).read_text())]


def by_kind(kind: str) -> list[dict]:
    return [doc for doc in k8s_documents() if doc["kind"] == kind]


def flags(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args)


@pytest.mark.parametrize("doc", k8s_documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_for_the_kubernetes_api(doc) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    [deployment] = by_kind("Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_deployment_reads_kiln_s_config_polls_it_and_is_ready_on_rest_status() -> None:
    [deployment] = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [server] = pod["containers"]
    given = flags(server["args"])
    assert set(REQUIRED_FLAGS) <= set(given) and int(given["--model_config_file_poll_wait_seconds"]) > 0
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    [claim] = by_kind("PersistentVolumeClaim")
    state = next(n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName")
                 == claim["metadata"]["name"])
    assert given["--model_config_file"].startswith(mounts[state] + "/"), "models.config lives on the shared claim"
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "replicas read what Airflow workers write"
    probe = server["readinessProbe"]["httpGet"]
    assert probe["path"].startswith("/v1/models/") and probe["port"] == "http"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": int(given["--port"]), "http": int(given["--rest_api_port"])}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for service in by_kind("Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    admin = [s for s in by_kind("Service") if s["spec"].get("publishNotReadyAddresses")]
    assert admin, "the deployer must reach a replica that has no model yet"


def test_the_config_files_are_the_protos_tf_serving_reads(tmp_path) -> None:
    from tensorflow_serving.config import model_server_config_pb2

    from serving.model_server.config import load_prometheus_path

    [config_map] = by_kind("ConfigMap")
    text_format.Parse(config_map["data"]["models.config"], model_server_config_pb2.ModelServerConfig())
    (tmp_path / "monitoring.config").write_text(config_map["data"]["monitoring.config"])
    assert load_prometheus_path(str(tmp_path / "monitoring.config")) == "/monitoring/prometheus/metrics"
    compose = yaml.safe_load((TF_SERVING / "compose.yaml").read_text())
    assert compose["configs"]["monitoring"]["content"] == config_map["data"]["monitoring.config"]


def test_the_compose_file_follows_the_compose_spec_and_runs_the_same_server() -> None:
    schema = json.loads((files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    compose = yaml.safe_load((TF_SERVING / "compose.yaml").read_text())
    validator.validate(compose)
    broken = copy.deepcopy(compose)
    broken["services"]["tf-serving"]["ports"] = 8500
    assert not validator.is_valid(broken)
    service = compose["services"]["tf-serving"]
    [deployment] = by_kind("Deployment")
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    assert service["entrypoint"] == server["command"] == ["tensorflow_model_server"]
    assert flags(service["command"]).keys() == flags(server["args"]).keys()
    kiln_state = "${KILN_HOME}/serving"
    [mount] = service["volumes"]
    assert mount["source"] == mount["target"] == kiln_state, "base paths in models.config mean the same inside"
    assert flags(service["command"])["--model_config_file"].endswith("/serving/models.config")


@pytest.mark.slow
def test_a_server_started_with_the_deployment_s_flags_serves_what_kiln_deploys(tmp_path) -> None:
    """The pod's filesystem under tmp_path: the claim at /kiln-serving, the ConfigMap at /etc/kiln."""
    from serving.deployer import ServingDeployer
    from serving.target import ServingTarget
    from tests.servers import start_server
    from tests.stand_in_models import save_pixels_model

    [deployment] = by_kind("Deployment")
    [config_map] = by_kind("ConfigMap")
    [server_spec] = deployment["spec"]["template"]["spec"]["containers"]
    etc, state = tmp_path / "etc-kiln", tmp_path / "kiln-serving"
    etc.mkdir()
    state.mkdir()
    for name, text in config_map["data"].items():
        (etc / name).write_text(text)
    (state / "models.config").write_text(config_map["data"]["models.config"])  # what the init container does
    given = flags(server_spec["args"])
    local = {k: v.replace("/kiln-serving", str(state)).replace("/etc/kiln", str(etc)) for k, v in given.items()
             if k not in ("--port", "--rest_api_port")}
    server = start_server(tmp_path, *(f"{k}={v}" for k, v in local.items()))
    try:
        readiness = server.rest_url + server_spec["readinessProbe"]["httpGet"]["path"]
        assert httpx.get(readiness).status_code == 404, "not ready before kiln deployed the model"
        target = ServingTarget(grpc_address=server.grpc_target, rest_url=server.rest_url,
                               model_base_path=state / "models", config_file=Path(local["--model_config_file"]))
        save_pixels_model(tmp_path / "model", seed=1)
        deployer = ServingDeployer(target)
        deployer.stage_version("digits", 1, tmp_path / "model", {})
        deployer.reconcile("digits", stable=1)
        assert httpx.get(readiness).status_code == 200
        metrics = httpx.get(server.rest_url + "/monitoring/prometheus/metrics")
        assert metrics.status_code == 200 and ":tensorflow:serving:" in metrics.text
    finally:
        server.stop()
