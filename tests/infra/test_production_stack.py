"""infra/production: the production stack (compose, Kubernetes manifests, Helm values, Prometheus, Grafana).

No Docker engine and no cluster here, so none of it is started: the compose file is validated against the
compose spec, the manifests and Secrets against the Kubernetes 1.37 OpenAPI schemas (kubernetes-validate),
the Helm values against the official Airflow chart's values.schema.json, both Prometheus configs against
SchemaStore's Prometheus schema plus target checks (no promtool on PyPI), every dashboard query with a real
PromQL parser (promql-parser) and its metric names against what kiln-model-server (TF Serving's names),
Airflow (its StatsD metrics registry) and kiln's registry exporter really export.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from infra.production import secrets as stack_secrets

REPO = Path(__file__).resolve().parents[2]
PROD = REPO / "infra" / "production"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_VERSION = "1.37.0"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def compose() -> dict:
    return load_yaml(PROD / "compose.yaml")


def validator(schema_path: Path):
    schema = json.loads(schema_path.read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def kustomization() -> dict:
    return load_yaml(PROD / "kustomization.yaml")


def generated_config_maps() -> list[dict]:
    """What kustomize's configMapGenerator makes (names unhashed: disableNameSuffixHash)."""
    maps = []
    for generator in kustomization()["configMapGenerator"]:
        data = {}
        for entry in generator["files"]:
            key, _, source = entry.rpartition("=")
            data[key or Path(source).name] = (PROD / source).read_text()
        maps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return maps


def own_manifests() -> list[dict]:
    return [doc for name in kustomization()["resources"] if name.startswith("k8s/")
            for doc in yaml.safe_load_all((PROD / name).read_text())]


def secret_documents() -> list[dict]:
    return stack_secrets.kubernetes_secrets(stack_secrets.generate(), namespace="kiln")


def helm_values() -> dict:
    return load_yaml(PROD / "helm" / "values.yaml")


# ---------------------------------------------------------------------------------------------- compose


def test_the_compose_file_follows_the_compose_spec() -> None:
    spec = json.loads((files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json").read_text())
    check = jsonschema.validators.validator_for(spec)(spec)
    stack = compose()
    check.validate(stack)
    broken = copy.deepcopy(stack)
    broken["services"]["postgres"]["healthcheck"]["retry"] = 10  # not a healthcheck field
    assert not check.is_valid(broken)


def test_the_compose_stack_has_every_service_and_runs_airflow_on_celery() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker-onprem", "mlflow", "minio", "tf-serving", "prometheus",
            "statsd-exporter", "grafana"} <= set(services)
    airflow = {name: s for name, s in services.items() if name.startswith("airflow-")}
    for name, service in airflow.items():
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name
        assert service["image"] == services["mlflow"]["image"], "one kiln image"
    assert services["airflow-api-server"]["command"] == ["api-server"]
    assert services["airflow-dag-processor"]["command"] == ["dag-processor"]
    worker = services["airflow-worker-onprem"]["command"]
    assert worker[:2] == ["celery", "worker"] and "onprem" in worker[worker.index("--queues") + 1].split(",")
    build = services["airflow-scheduler"]["build"]
    assert (PROD / build["context"] / build["dockerfile"]).resolve() == REPO / "infra" / "Dockerfile"
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    assert "FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}" in dockerfile
    assert "ARG AIRFLOW_VERSION=3.3.2" in dockerfile


def test_mlflow_runs_on_postgres_with_the_minio_artifact_store() -> None:
    services = compose()["services"]
    mlflow = services["mlflow"]
    assert mlflow["entrypoint"] == ["mlflow", "server"], "the Airflow image's entrypoint would prepend airflow"
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:")
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "--serve-artifacts" in mlflow["command"]
    init = (PROD / "config" / "postgres" / "init-databases.sh").read_text()
    assert "CREATE DATABASE airflow" in init and "CREATE DATABASE mlflow" in init
    for name, service in services.items():
        if name != "mlflow":
            assert "MINIO_ROOT_PASSWORD" not in json.dumps(service.get("environment", {})) or name.startswith("minio"), \
                f"{name}: only MLflow and MinIO hold the bucket's keys"


def test_tf_serving_loads_what_the_deployer_writes_on_the_shared_volume() -> None:
    services = compose()["services"]
    serving, worker = services["tf-serving"], services["airflow-worker-onprem"]
    flags = dict(arg.split("=", 1) for arg in serving["command"])
    [mount] = [v for v in serving["volumes"] if isinstance(v, dict)]
    assert mount["read_only"] and flags["--model_config_file"] == mount["target"] + "/models.config"
    assert f"{mount['source']}:{mount['target']}" in worker["volumes"], "the worker writes where TF Serving reads"
    env = worker["environment"]
    assert env["KILN_SERVING_CONFIG"] == flags["--model_config_file"]
    assert env["KILN_SERVING_MODELS"].startswith(mount["target"] + "/")
    assert env["KILN_SERVING_REST"] == "http://tf-serving:" + flags["--rest_api_port"]
    assert env["KILN_SERVING_GRPC"] == "tf-serving:" + flags["--port"]
    assert PROMETHEUS_PATH in compose()["configs"]["tf-serving-monitoring"]["content"]


def test_every_service_is_health_checked_and_started_after_what_it_needs() -> None:
    services = compose()["services"]
    one_shots = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shots == {"airflow-init", "minio-init", "serving-init"}
    for name, service in services.items():
        if name not in one_shots:
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for needed, rule in service.get("depends_on", {}).items():
            assert needed in services and needed != name, f"{name} depends on {needed}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], f"{name} waits for {needed}'s health, which is never checked"
            if rule["condition"] == "service_completed_successfully":
                assert needed in one_shots, f"{name} waits for {needed} to exit"
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-worker-onprem"):
        conditions = services[name]["depends_on"]
        assert conditions["postgres"] == {"condition": "service_healthy"}
        assert conditions["airflow-init"] == {"condition": "service_completed_successfully"}


def test_every_variable_compose_reads_is_in_the_env_file_or_has_a_default() -> None:
    text = "\n".join(line for line in (PROD / "compose.yaml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    used = re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}", text)
    known = set(stack_secrets.SETTINGS) | set(stack_secrets.SECRETS)
    for name, rest in used:
        assert name in known or rest.startswith(":-"), f"compose reads ${{{name}}}{rest}, which the env file lacks"
    assert set(stack_secrets.SECRETS) <= {name for name, _ in used}, "a generated secret nothing uses"


# --------------------------------------------------------------------------------------------- security


def test_the_env_file_is_git_ignored_and_the_example_is_the_generator_s() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/production/.env"], cwd=REPO)
    assert ignored.returncode == 0, "infra/production/.env must be git-ignored"
    kept = subprocess.run(["git", "check-ignore", "-q", "infra/production/.env.example"], cwd=REPO)
    assert kept.returncode == 1, ".env.example is committed"
    assert (PROD / ".env.example").read_text() == stack_secrets.example()
    assert "**/.env" in (REPO / "infra" / "Dockerfile.dockerignore").read_text().split()


def test_the_generator_writes_fresh_secrets_once_and_privately(tmp_path) -> None:
    from cryptography.fernet import Fernet

    first, second = stack_secrets.generate(), stack_secrets.generate()
    Fernet(first["AIRFLOW_FERNET_KEY"].encode())
    for name in stack_secrets.SECRETS:
        assert len(first[name]) >= 32 and first[name] != second[name], name
    assert len({first[name] for name in stack_secrets.SECRETS}) == len(stack_secrets.SECRETS)
    env = tmp_path / ".env"
    assert stack_secrets.main(["--write", str(env)]) == 0
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    written = env.read_text()
    assert stack_secrets.main(["--write", str(env)]) == 1 and env.read_text() == written, "never overwritten"
    values = stack_secrets.read_env(env)
    assert set(values) == set(stack_secrets.SETTINGS) | set(stack_secrets.SECRETS)
    (tmp_path / "empty.env").write_text(stack_secrets.example())
    with pytest.raises(SystemExit, match="no value for POSTGRES_PASSWORD"):
        stack_secrets.read_env(tmp_path / "empty.env")


SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    # password/secret/key/token = or : a literal (not a ${VAR}, $VAR, $$VAR, empty, or a *SecretName reference)
    re.compile(r"(?i)\b[\w.-]*(password|passwd|secret|token|fernet)[\w.-]*\b\s*[:=]\s*"
               r"(?![\s\"']*(\$|\{\{|$|~|null\b|kiln-[a-z-]+\s*$|[A-Za-z_]+\s*$|'[a-z_]+';))[\"']?[^\s\"'#]{6,}"),
    # a long random-looking token (base64/hex) anywhere
    re.compile(r"(?<![\w$/.-])(?=[A-Za-z0-9_+/=-]*\d)(?=[A-Za-z0-9_+/=-]*[A-Z])(?=[A-Za-z0-9_+/=-]*[a-z])"
               r"[A-Za-z0-9_+/=-]{32,}(?![\w/.-])"),
]


def secret_findings(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()
            if not line.lstrip().startswith("#") and any(p.search(line) for p in SECRET_PATTERNS)]


def production_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "infra/production",
                             "infra/Dockerfile", "infra/Dockerfile.dockerignore"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed if not name.endswith((".py", ".json"))] + \
        [PROD / "config" / "grafana" / "dashboards" / "kiln.json"]


def test_no_secret_literal_in_the_production_files() -> None:
    paths = production_files()
    assert PROD / "compose.yaml" in paths and PROD / "helm" / "values.yaml" in paths
    found = {str(p.relative_to(REPO)): hits for p in paths if (hits := secret_findings(p.read_text()))}
    assert not found, f"secret-looking literals: {found}"


def test_the_secret_check_fires_on_a_generated_env_file_and_a_pasted_password() -> None:
    values = stack_secrets.generate()
    env = stack_secrets.render(values)
    hits = secret_findings(env)
    assert len(hits) == len(stack_secrets.SECRETS), hits
    assert secret_findings('      GF_SECURITY_ADMIN_PASSWORD: hunter2hunter2')
    assert secret_findings('  password: "s3cr3t-pa55"')
    assert not secret_findings("  fernetKeySecretName: kiln-airflow-fernet-key")


def test_airflow_is_never_in_all_admins_mode_and_has_a_named_first_user() -> None:
    fab = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    services = compose()["services"]
    for name, service in services.items():
        if name.startswith("airflow-"):
            assert service["environment"]["AIRFLOW__CORE__AUTH_MANAGER"] == fab, name
    assert helm_values()["config"]["core"]["auth_manager"] == fab
    for path in production_files():
        assert "ALL_ADMINS" not in path.read_text().upper(), path
    init = services["airflow-init"]["command"][0]
    assert '--password "$$AIRFLOW_ADMIN_PASSWORD"' in init and "--role Admin" in init
    job = " ".join(helm_values()["createUserJob"]["args"])
    assert '--password "$AIRFLOW_ADMIN_PASSWORD"' in job, "not the chart's admin/admin"


def test_only_the_uis_are_published_and_the_data_stores_are_internal() -> None:
    stack = compose()
    services = stack["services"]
    assert stack["networks"]["backend"]["internal"] is True
    for name in ("postgres", "redis", "minio", "minio-init"):
        assert services[name]["networks"] == ["backend"] and "ports" not in services[name], name
    for name, service in services.items():
        for port in service.get("ports", []):
            address = port.rsplit(":", 2)[0]
            if name in ("airflow-api-server", "grafana"):
                assert address == "${KILN_PUBLISH_ADDRESS:-127.0.0.1}", (name, port)
            else:
                assert address == "127.0.0.1", f"{name} is published beyond this host: {port}"
    for doc in own_manifests():
        assert doc["kind"] != "Ingress" and doc.get("spec", {}).get("type", "ClusterIP") == "ClusterIP", doc


# ---------------------------------------------------------------------------------------------- Kubernetes


def all_k8s_documents() -> list[dict]:
    return own_manifests() + generated_config_maps() + secret_documents()


@pytest.mark.parametrize("doc", all_k8s_documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_for_the_kubernetes_api(doc) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_includes_tf_serving_and_its_files_exist() -> None:
    resources = kustomization()["resources"]
    assert "../tf_serving/k8s" in resources
    for name in resources:
        assert (PROD / name).exists(), name
    names = {doc["metadata"]["name"] for doc in own_manifests()}
    assert {"mlflow", "prometheus", "grafana", "kiln-mlflow", "kiln-grafana", "kiln-prometheus"} <= names


def referenced_secrets(node, found=None) -> set[tuple[str, str | None]]:
    found = set() if found is None else found
    if isinstance(node, dict):
        if "secretRef" in node:
            found.add((node["secretRef"]["name"], None))
        if "secretKeyRef" in node:
            found.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
        for value in node.values():
            referenced_secrets(value, found)
    elif isinstance(node, list):
        for value in node:
            referenced_secrets(value, found)
    return found


def test_every_secret_the_manifests_and_the_chart_read_is_generated_with_its_keys() -> None:
    made = {doc["metadata"]["name"]: set(doc["stringData"]) for doc in secret_documents()}
    values = helm_values()
    wanted = referenced_secrets(own_manifests())
    wanted |= referenced_secrets(yaml.safe_load(values["extraEnvFrom"]))
    # The chart reads these Secrets with these keys (templates/_helpers.yaml of chart 1.22).
    wanted |= {(values["fernetKeySecretName"], "fernet-key"), (values["apiSecretKeySecretName"], "api-secret-key"),
               (values["jwtSecretName"], "jwt-secret"), (values["data"]["metadataSecretName"], "connection"),
               (values["data"]["resultBackendSecretName"], "connection"),
               (values["data"]["brokerUrlSecretName"], "connection"),
               (values["redis"]["passwordSecretName"], "password")}
    for name, key in wanted:
        assert name in made, f"nothing makes Secret {name}"
        assert key is None or key in made[name], f"Secret {name} has no key {key}"
    broker = next(d for d in secret_documents() if d["metadata"]["name"] == "kiln-airflow-broker-url")
    assert "@kiln-airflow-redis:6379" in broker["stringData"]["connection"], "the release is named kiln-airflow"
    admin = next(d for d in secret_documents() if d["metadata"]["name"] == "kiln-airflow-admin")
    assert {"AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD"} <= set(admin["stringData"])


def test_the_mlflow_network_policy_admits_airflow_pods_and_the_exporter_only() -> None:
    [policy] = [d for d in own_manifests() if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "kiln-mlflow"]
    sources = [peer["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert sources == [{"tier": "airflow"}, {"app.kubernetes.io/name": "kiln-registry-exporter"}]


# ------------------------------------------------------------------------------------------------- Helm


def test_the_helm_values_follow_the_official_chart_s_schema() -> None:
    check = validator(SCHEMAS / "airflow-chart-1.22.0.values.schema.json")
    values = helm_values()
    check.validate(values)
    assert values["executor"] == "CeleryExecutor,KubernetesExecutor"
    assert "onprem" in values["workers"]["celery"]["queue"].split(",")
    for broken_key, broken_value in (("executor", "Celery"), ("workers", {"celery": {"replicas": "two"}}),
                                     ("postgresql", {"enabled": "no"})):
        broken = {**copy.deepcopy(values), broken_key: broken_value}
        assert not check.is_valid(broken), broken_key
    env = {e["name"]: e["value"] for e in values["env"]}
    assert set(stack_secrets.SECRETS).isdisjoint(env), "secrets come from Secrets, not values"
    claim = load_yaml(REPO / "infra" / "tf_serving" / "k8s" / "pvc.yaml")["metadata"]["name"]
    for kind in ("celery", "kubernetes"):
        [volume] = values["workers"][kind]["extraVolumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim
    assert env["KILN_SERVING_CONFIG"].startswith(values["workers"]["celery"]["extraVolumeMounts"][0]["mountPath"])


def test_the_chart_s_statsd_gets_the_same_kiln_mapping_as_compose() -> None:
    compose_mappings = load_yaml(PROD / "config" / "statsd" / "mappings.yml")["mappings"]
    for mapping in helm_values()["statsd"]["extraMappings"]:
        assert mapping in compose_mappings


# ------------------------------------------------------------------------------------------- Prometheus


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-k8s.yml"])
def test_the_prometheus_configs_follow_prometheus_s_schema(name) -> None:
    check = validator(SCHEMAS / "prometheus.schema.json")
    config = load_yaml(PROD / "config" / "prometheus" / name)
    check.validate(config)
    broken = copy.deepcopy(config)
    broken["scrape_configs"][0]["scrape_interval"] = "fifteen seconds"
    assert not check.is_valid(broken)
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert len(jobs) == len(set(jobs)), "job names are unique"
    for job in config["scrape_configs"]:
        for relabel in job.get("relabel_configs", []):
            re.compile(relabel.get("regex", "(.*)"))


def port_of(service: dict, flag_names: tuple[str, ...]) -> set[int]:
    text = " ".join(map(str, service.get("command", [])))
    return {int(m) for flag in flag_names for m in re.findall(rf"{flag}[= ]:?(\d+)", text)}


def test_the_compose_prometheus_scrapes_real_services_on_their_ports() -> None:
    config = load_yaml(PROD / "config" / "prometheus" / "prometheus.yml")
    services = compose()["services"]
    listening = {"tf-serving": port_of(services["tf-serving"], ("--rest_api_port",)),
                 "statsd-exporter": port_of(services["statsd-exporter"], ("--web.listen-address",)),
                 "registry-exporter": port_of(services["registry-exporter"], ("--port",)),
                 "localhost": {9090}}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job in jobs.values():
        for target in (t for group in job["static_configs"] for t in group["targets"]):
            host, port = target.rsplit(":", 1)
            assert int(port) in listening[host], f"{job['job_name']}: nothing listens on {target}"
    assert jobs["tf-serving"]["metrics_path"] == PROMETHEUS_PATH
    assert services["prometheus"]["volumes"][0]["source"] == "./config/prometheus/prometheus.yml"


def test_the_kubernetes_prometheus_finds_tf_serving_and_the_exporter_by_annotation() -> None:
    serving = load_yaml(REPO / "infra" / "tf_serving" / "k8s" / "deployment.yaml")
    [exporter] = [d for d in own_manifests() if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "kiln-registry-exporter"]
    for deployment in (serving, exporter):
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        ports = {p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) in ports
    assert serving["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == PROMETHEUS_PATH
    config = load_yaml(PROD / "config" / "prometheus" / "prometheus-k8s.yml")
    statsd = [t for job in config["scrape_configs"] for g in job.get("static_configs", []) for t in g["targets"]
              if "statsd" in t]
    assert statsd == ["kiln-airflow-statsd:9102"], "the chart's statsd Service for release kiln-airflow"


# ------------------------------------------------------------------------------- metrics and dashboard


def tf_serving_metrics() -> dict[str, set[str]]:
    """Every series name the model server's Prometheus page can hold, with its labels."""
    from serving.model_server.metrics import Counter, ServerMetrics

    known = {}
    for metric in vars(ServerMetrics()).values():
        if isinstance(metric, Counter):
            known[metric.name] = set(metric.label_names)
        elif hasattr(metric, "bounds"):
            known[metric.name + "_bucket"] = {*metric.label_names, "le"}
            known[metric.name + "_sum"] = known[metric.name + "_count"] = set(metric.label_names)
    return known


def airflow_registry() -> dict[str, dict]:
    import airflow

    path = Path(airflow.__file__).parent / "_shared" / "observability" / "metrics" / "metrics_template.yaml"
    return {m["legacy_name"]: m for m in load_yaml(path)["metrics"] if m.get("legacy_name", "-") != "-"}


def statsd_metrics() -> dict[str, set[str]]:
    """The statsd-exporter's series for the mapped Airflow metrics (timers: summaries in seconds)."""
    by_glob = {re.sub(r"\{\w+\}", "*", legacy): m for legacy, m in airflow_registry().items()}
    plain = {"airflow.scheduler_heartbeat"}
    known = {}
    for mapping in load_yaml(PROD / "config" / "statsd" / "mappings.yml")["mappings"]:
        labels = set(mapping.get("labels", {}))
        if mapping["match"] in plain:
            known[mapping["name"]] = labels
            continue
        source = by_glob.get(mapping["match"].removeprefix("airflow."))
        assert source, f"{mapping['match']}: Airflow emits no such StatsD metric"
        assert len(labels) == len(source["name_variables"]), mapping
        if source["type"] == "timer":
            known[mapping["name"]] = {*labels, "quantile"}
            known[mapping["name"] + "_sum"] = known[mapping["name"] + "_count"] = labels
        else:
            known[mapping["name"]] = labels
    return known


@pytest.fixture(scope="module")
def registry_metrics(tmp_path_factory) -> dict[str, set[str]]:
    """What kiln's registry exporter prints for a real MLflow registry (SQLite, in a temp folder)."""
    from mlflow import MlflowClient
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from infra.production.registry_exporter import RegistryCollector

    folder = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db", registry_uri=f"sqlite:///{folder}/mlflow.db")
    experiment = client.create_experiment("kiln", artifact_location=str(folder / "artifacts"))
    client.create_registered_model("kiln-digits")
    for version, accuracy in ((1, 0.91), (2, 0.95)):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "eval_accuracy", accuracy)
        client.log_metric(run.info.run_id, "tflite_bytes", 1000.0 * version)
        client.log_metric(run.info.run_id, "loss", 0.1)
        client.create_model_version("kiln-digits", str(folder / f"m{version}"), run_id=run.info.run_id,
                                    tags={"blessed": "true" if version == 2 else "false"})
    client.set_registered_model_alias("kiln-digits", "champion", "2")
    client.set_registered_model_alias("kiln-digits", "previous-champion", "1")
    for start, drifted, skew in ((1000, "false", 0.02), (2000, "true", 0.31)):  # the newest check is exported
        monitor = client.create_run(experiment, start_time=start, tags={
            "kiln.role": "monitor", "kiln.pipeline": "digits", "kiln.drifted": drifted})
        for key, value in (("drift_pixel_3", 0.05), ("skew_pixel_3", skew), ("traffic_drift_pixel_3", 0.2),
                           ("served_requests", 240.0)):
            client.log_metric(monitor.info.run_id, key, value)
    registry = CollectorRegistry()
    registry.register(RegistryCollector(client))
    text = generate_latest(registry).decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    assert values[("kiln_model_version_metric",
                   (("metric", "eval_accuracy"), ("model", "kiln-digits"), ("version", "2")))] == 0.95
    assert values[("kiln_model_alias_version", (("alias", "champion"), ("model", "kiln-digits")))] == 2
    assert values[("kiln_model_version_blessed", (("model", "kiln-digits"), ("version", "1")))] == 0
    assert values[("kiln_registry_up", ())] == 1
    assert values[("kiln_monitor_distance", (("check", "skew"), ("feature", "pixel_3"), ("pipeline", "digits")))] == 0.31
    assert values[("kiln_monitor_distance", (("check", "traffic_drift"), ("feature", "pixel_3"),
                                             ("pipeline", "digits")))] == 0.2
    assert values[("kiln_monitor_distance", (("check", "span"), ("feature", "pixel_3"), ("pipeline", "digits")))] == 0.05
    assert values[("kiln_monitor_drifted", (("pipeline", "digits"),))] == 1
    assert values[("kiln_monitor_served_requests", (("pipeline", "digits"),))] == 240
    assert not any(s.labels.get("metric") == "loss" for s in samples), "only what register logs"
    broken = CollectorRegistry()
    broken.register(RegistryCollector(MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        assert "kiln_registry_up 0.0" in generate_latest(broken).decode()
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    known: dict[str, set[str]] = {}
    for s in samples:
        known.setdefault(s.name, set()).update(s.labels)
    return known


def dashboard() -> dict:
    return json.loads((PROD / "config" / "grafana" / "dashboards" / "kiln.json").read_text())


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables as the server substitutes them, so the expression can be parsed."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
    return re.sub(r"\$(model|registered_model|metric)\b", ".*", expr)


def selectors(node, groupings: list[set[str]]) -> list[tuple[str, set[str]]]:
    """Every (metric name, labels its matchers use) in a parsed expression; aggregation labels collected."""
    kind = type(node).__name__
    if kind == "VectorSelector":
        matchers = {m.name for m in node.matchers.matchers} if node.matchers else set()
        return [(node.name, matchers - {"__name__"})]
    if kind == "AggregateExpr" and node.modifier is not None:
        groupings.append(set(node.modifier.labels))
    found = []
    for attribute in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, int | float | str):
            found += selectors(child, groupings)
    for arg in getattr(node, "args", None) or []:
        found += selectors(arg, groupings)
    return found


def test_the_model_server_really_exports_the_tf_serving_names_the_dashboard_reads() -> None:
    from serving.model_server.metrics import ServerMetrics

    metrics = ServerMetrics()
    metrics.request_count.inc("digits", "OK")
    metrics.request_latency.observe("digits", "predict", "REST", value=1200.0)
    metrics.load_attempt_count.inc("/kiln-serving/models/digits/3", "success")
    page = metrics.prometheus_text()
    names = {line.split("{")[0].split(" ")[0] for line in page.splitlines() if not line.startswith("#")}
    assert {":tensorflow:serving:request_count", ":tensorflow:serving:request_latency_bucket",
            ":tensorflow:cc:saved_model:load_attempt_count"} <= names
    assert names <= set(tf_serving_metrics())


def test_every_dashboard_query_parses_and_reads_a_metric_that_is_really_exported(registry_metrics) -> None:
    known = {**tf_serving_metrics(), **statsd_metrics(), **registry_metrics}
    board = dashboard()
    queries = [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]
    assert len(queries) >= 10
    sources = {"tf": False, "airflow": False, "kiln": False}
    for title, expr in queries:
        groupings: list[set[str]] = []
        found = selectors(promql_parser.parse(grafana_to_promql(expr)), groupings)
        assert found, f"{title}: no metric"
        names = {name for name, _ in found}
        for name, matchers in found:
            assert name in known, f"{title}: {name} is exported by nothing in the stack"
            assert matchers <= known[name], f"{title}: {name} has no label {matchers - known[name]}"
        labels = set().union(*(known[name] for name in names))
        for grouping in groupings:
            assert grouping <= labels, f"{title}: grouped by {grouping - labels}, which {names} lack"
        sources["tf"] |= any(n.startswith(":tensorflow:") for n in names)
        sources["airflow"] |= any(n.startswith("airflow_") for n in names)
        sources["kiln"] |= any(n.startswith("kiln_") for n in names)
    assert all(sources.values()), sources
    for variable in board["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"]).groups()
        [(name, _)] = selectors(promql_parser.parse(grafana_to_promql(metric)), [])
        assert label in known[name], variable["name"]


def test_the_dashboard_covers_serving_pipelines_and_models_and_is_provisioned() -> None:
    board = dashboard()
    titles = " | ".join(p["title"] for p in board["panels"]).lower()
    for words in ("requests per second", "error", "latency", "version", "pipeline run duration",
                  "runs finished", "model metric over versions", "served-traffic skew per feature"):
        assert words in titles, words
    datasource = load_yaml(PROD / "config" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    [source] = datasource["datasources"]
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"] and board["schemaVersion"] >= 39
    services = compose()["services"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in services
    assert any(d["metadata"]["name"] == "prometheus" and d["kind"] == "Service" for d in own_manifests())
    provider = load_yaml(PROD / "config" / "grafana" / "provisioning" / "dashboards" / "kiln.yml")["providers"][0]
    mounts = {v["target"]: v["source"] for v in services["grafana"]["volumes"] if isinstance(v, dict)}
    assert mounts[provider["options"]["path"]] == "./config/grafana/dashboards"
    [grafana] = [d for d in own_manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "kiln-grafana"]
    k8s_mounts = {m["mountPath"] for m in grafana["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert provider["options"]["path"] in k8s_mounts
