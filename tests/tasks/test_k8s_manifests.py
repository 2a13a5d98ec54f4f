"""Training on Kubernetes, rendered: the TFJob, the Indexed Job + headless Service, the pods' TF_CONFIG
and train.kubernetes' validation. No cluster exists here: the Job, Service and the TFJob's pod template
are validated against the Kubernetes 1.37 OpenAPI schemas (kubernetes-validate, strict); the TFJob
itself, a custom resource, against a JSON schema of the fields kiln sets, transcribed from the training
operator's CRD (kubeflow/training-operator manifests/base/crds/kubeflow.org_tfjobs.yaml, v1)."""

from __future__ import annotations

import copy
import json
import re

import jsonschema
import kubernetes_validate
import pytest

from tasks.config import ConfigError, KubernetesTraining, TrainConfig, validate_config
from tasks.training import k8s_entry
from tasks.training.k8s_launcher import require_object_storage
from tasks.training.k8s_manifests import CONTAINER, JOB_LABEL, job_name, render_indexed_job, render_tfjob
from tasks.training.launcher import TrainError
from tests.tasks.conftest import worker_spec

KUBERNETES_VERSION = "1.37.0"
SPEC_URI = "s3://kiln/artifacts/churn/run1/train/.work/kiln-churn-train-abc123.spec.json"
SETTINGS = KubernetesTraining.model_validate({
    "image": "registry.example/kiln:1.4", "namespace": "ml",
    "resources": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1},
    "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                     "toleration_seconds": 60}],
    "service_account": "kiln-train", "env": {"AWS_ENDPOINT_URL": "http://minio:9000"},
    "env_from_secret": "kiln-s3",
})

INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
TFJOB_SCHEMA = {  # the CRD's openAPIV3Schema for what kiln sets; the pod template is checked separately
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v1"},
        "kind": {"const": "TFJob"},
        "metadata": {"type": "object", "required": ["name", "namespace"], "properties": {
            "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "required": ["tfReplicaSpecs"], "additionalProperties": False, "properties": {
            "enableDynamicWorker": {"type": "boolean"},
            "runPolicy": {"type": "object", "additionalProperties": False, "properties": {
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": INT32,
                "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                "schedulingPolicy": {"type": "object"},
                "suspend": {"type": "boolean"},
                "ttlSecondsAfterFinished": INT32}},
            "successPolicy": {"enum": ["", "AllWorkers"]},
            "tfReplicaSpecs": {
                "type": "object",
                "propertyNames": {"enum": ["Chief", "PS", "Worker", "Evaluator", "Master"]},
                "additionalProperties": {"type": "object", "additionalProperties": False,
                                         "required": ["template"], "properties": {
                                             "replicas": INT32,
                                             "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
                                             "template": {"type": "object", "required": ["spec"]}}}}}},
    },
}


def tfjob(num_workers: int = 3, max_restarts: int = 2, settings: KubernetesTraining = SETTINGS) -> dict:
    return render_tfjob(settings, "kiln-churn-train-abc123", SPEC_URI, num_workers, 900, max_restarts,
                        {"kiln.dev/pipeline": "churn"})


def indexed(num_workers: int = 3, max_restarts: int = 2, settings: KubernetesTraining = SETTINGS) -> tuple[dict, dict]:
    return render_indexed_job(settings, "kiln-churn-train-abc123", SPEC_URI, num_workers, 900, max_restarts)


def as_pod_template(template: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


# --- validated against the schemas -----------------------------------------------------------------------


def test_the_tfjob_matches_the_crd_and_its_pod_template_the_kubernetes_api() -> None:
    job = tfjob()
    jsonschema.validate(job, TFJOB_SCHEMA)
    template = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]
    kubernetes_validate.validate(as_pod_template(template, job["metadata"]["name"]), KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("operator", ["tfjob", "indexed-job"])
def test_the_minimal_settings_render_valid_objects(operator: str) -> None:
    bare = KubernetesTraining(image="kiln:dev", operator=operator)
    if operator == "tfjob":
        job = tfjob(num_workers=1, max_restarts=0, settings=bare)
        jsonschema.validate(job, TFJOB_SCHEMA)
        docs = [as_pod_template(job["spec"]["tfReplicaSpecs"]["Worker"]["template"], "t")]
    else:
        docs = list(indexed(num_workers=1, max_restarts=0, settings=bare))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    pod = (docs[0]["template"] if operator == "tfjob" else docs[0]["spec"]["template"])["spec"]
    assert "resources" not in pod["containers"][0] and "nodeSelector" not in pod and "tolerations" not in pod


def test_the_indexed_job_and_its_service_are_valid_for_the_kubernetes_api() -> None:
    job, service = indexed()
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)


def test_the_validators_have_teeth() -> None:
    broken = tfjob()
    broken["spec"]["tfReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, TFJOB_SCHEMA)
    job, _ = indexed()
    job["spec"]["template"]["spec"]["tolerations"][0]["tolerationSeconds"] = "soon"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    template = copy.deepcopy(tfjob()["spec"]["tfReplicaSpecs"]["Worker"]["template"])
    template["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(as_pod_template(template, "t"), KUBERNETES_VERSION, strict=True)


# --- what is rendered ------------------------------------------------------------------------------------


def test_the_tfjob_runs_the_worker_on_the_spec_uri_with_the_profile_s_placement() -> None:
    job = tfjob(num_workers=3, max_restarts=2)
    assert job["spec"]["runPolicy"]["backoffLimit"] == 2
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 900, "the cluster enforces the deadline too"
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert (worker["replicas"], worker["restartPolicy"]) == (3, "OnFailure")
    assert set(job["spec"]["tfReplicaSpecs"]) == {"Worker"}, "worker 0 is the chief, as on loopback"
    pod = worker["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == CONTAINER == "tensorflow", "the operator writes TF_CONFIG into this container"
    assert container["command"] == ["python", "-m", "tasks.training.worker", "--spec", SPEC_URI]
    assert container["ports"] == [{"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TF_USE_LEGACY_KERAS"] == "1" and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "TF_CONFIG" not in env
    assert container["envFrom"] == [{"secretRef": {"name": "kiln-s3"}}]
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                                      "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"}}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute", "tolerationSeconds": 60}]
    assert pod["serviceAccountName"] == "kiln-train"
    labels = worker["template"]["metadata"]["labels"]
    assert labels[JOB_LABEL] == job["metadata"]["name"] and labels["kiln.dev/pipeline"] == "churn"


def test_the_indexed_job_builds_tf_config_from_the_index_behind_a_headless_service() -> None:
    job, service = indexed(num_workers=3, max_restarts=1)
    name = job["metadata"]["name"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == \
           ("Indexed", 3, 3, 1)
    assert spec["suspend"] is True, "resumed only once the Service exists"
    [rule] = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [3], "a contract error is final"
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == name
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["command"] == ["python", "-m", "tasks.training.k8s_entry", "--spec", SPEC_URI, "--job", name,
                                    "--workers", "3", "--service", name, "--port", "2222"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 2222


def test_job_names_are_dns_labels_short_enough_for_every_pod_hostname() -> None:
    names = {job_name("kiln-" + "very_long_pipeline_name" * 4 + "-optimize") for _ in range(20)}
    assert len(names) == 20, "unique per submission"
    for name in names | {job_name("kiln-7up-train"), job_name("9-lives")}:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
        assert len(f"{name}-worker-63") <= 63 and len(f"{name}-63") <= 63


# --- the pods' TF_CONFIG ---------------------------------------------------------------------------------


def test_tf_config_names_every_worker_by_its_pod_hostname_under_the_service() -> None:
    assert k8s_entry.tf_config("job-a1", "job-a1", workers=3, port=2222, index=1) == {
        "cluster": {"worker": ["job-a1-0.job-a1:2222", "job-a1-1.job-a1:2222", "job-a1-2.job-a1:2222"]},
        "task": {"type": "worker", "index": 1}}


def test_the_entry_point_sets_tf_config_from_the_completion_index_and_execs_the_worker(monkeypatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    monkeypatch.delenv("TF_USE_LEGACY_KERAS")  # the worker gets it from the entry point, not by inheritance
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    execs = []
    code = k8s_entry.main(["--spec", SPEC_URI, "--job", "j", "--workers", "3", "--service", "s", "--port", "2345"],
                          execve=lambda path, argv, env: execs.append((path, argv, env)))
    assert code == 0
    [(path, argv, env)] = execs
    assert argv[0] == path and argv[1:] == ["-m", "tasks.training.worker", "--spec", SPEC_URI]
    assert json.loads(env["TF_CONFIG"]) == {"cluster": {"worker": ["j-0.s:2345", "j-1.s:2345", "j-2.s:2345"]},
                                            "task": {"type": "worker", "index": 2}}
    assert env["TF_USE_LEGACY_KERAS"] == "1" and env["AWS_ENDPOINT_URL"] == "http://minio:9000"


@pytest.mark.parametrize(("index", "said"), [(None, "JOB_COMPLETION_INDEX is not set"),
                                             ("3", "JOB_COMPLETION_INDEX=3 is outside 0..2"),
                                             ("one", "invalid literal")])
def test_the_entry_point_refuses_a_pod_without_a_usable_index(monkeypatch, capsys, index, said) -> None:
    if index is None:
        monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    else:
        monkeypatch.setenv("JOB_COMPLETION_INDEX", index)
    execs = []
    assert k8s_entry.main(["--spec", SPEC_URI, "--job", "j", "--workers", "3", "--service", "s"],
                          execve=lambda *a: execs.append(a)) == 2
    assert not execs
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("k8s_entry: ") and said in line


# --- object storage only ---------------------------------------------------------------------------------


def test_a_local_artifact_root_is_refused_in_one_line() -> None:
    with pytest.raises(TrainError) as err:
        require_object_storage("/home/me/kiln/artifacts/churn/r1/train/.work", worker_spec("s3://b/work"))
    assert str(err.value) == ("train.launcher kubernetes needs an artifact root on object storage (s3://..., "
                              "gs://...): pods cannot read /home/me/kiln/artifacts/churn/r1/train/.work")
    with pytest.raises(TrainError, match="needs an artifact root on object storage"):
        require_object_storage("file:///tmp/artifacts", worker_spec("s3://b/work"))


def test_a_spec_of_urls_only_is_accepted() -> None:
    for mode in ("train", "compress"):
        require_object_storage("s3://b/work", worker_spec("s3://b/work", mode))


@pytest.mark.parametrize(("mode", "field", "local"), [
    ("train", "train_files", ["/data/train-0.parquet"]),
    ("train", "saved_model_dir", "/tmp/staging/saved_model"),
    ("train", "metrics_path", "file:///tmp/metrics.jsonl"),
    ("train", "backup_dir", "/tmp/backup"),
    ("compress", "initial_weights", "/tmp/model/variables/variables"),
    ("compress", "report_path", "/tmp/fine_tunes.json"),
])
def test_a_local_path_in_the_spec_is_refused_by_name(mode: str, field: str, local: str | list[str]) -> None:
    with pytest.raises(TrainError) as err:
        require_object_storage("s3://b/work", worker_spec("s3://b/work", mode, **{field: local}))
    shown = local[0] if isinstance(local, list) else local
    assert str(err.value) == (f"train.launcher kubernetes: the worker spec's {field} is a local path ({shown}); pods "
                              f"can only read and write object storage")


def test_a_local_output_folder_is_refused_by_name() -> None:
    spec = worker_spec("s3://b/work", "compress", outputs={"pruned": "s3://b/pruned", "qat": "/tmp/qat"})
    with pytest.raises(TrainError, match=r"outputs is a local path \(/tmp/qat\)"):
        require_object_storage("s3://b/work", spec)


# --- train.kubernetes ------------------------------------------------------------------------------------


def test_local_stays_the_default_and_kubernetes_needs_its_section() -> None:
    assert TrainConfig().launcher == "local" and TrainConfig().kubernetes is None
    base = {"pipeline": "p", "data": {"source": "d.csv"}, "task": {"type": "regression"}}
    with pytest.raises(ConfigError, match="launcher kubernetes needs a train.kubernetes section"):
        validate_config({**base, "train": {"launcher": "kubernetes"}}, "p.yaml")
    config = validate_config({**base, "train": {"launcher": "kubernetes", "kubernetes": {
        "image": "kiln:1", "resources": {"nvidia.com/gpu": 2}}}}, "p.yaml")
    assert config.train.kubernetes.resources.gpu == 2
    changed = config.with_values({"train.epochs": 3})  # a dump and a validation again: the alias round-trips
    assert changed.train.kubernetes == config.train.kubernetes
    assert TrainConfig.model_validate(json.loads(json.dumps(config.train.model_dump(mode="json")))) == config.train, \
        "the worker reads train back from the spec"


@pytest.mark.parametrize(("kubernetes", "field"), [
    ({"image": ""}, "train.kubernetes.image"),
    ({"image": "k", "resources": {"memory": "16GB"}}, "train.kubernetes.resources.memory"),
    ({"image": "k", "resources": {"nvidia.com/gpu": -1}}, "train.kubernetes.resources.nvidia.com/gpu"),
    ({"image": "k", "namespace": "ML_Team"}, "train.kubernetes.namespace"),
    ({"image": "k", "operator": "mpijob"}, "train.kubernetes.operator"),
    ({"image": "k", "tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}, "train.kubernetes.tolerations.0"),
    ({"image": "k", "tolerations": [{"key": "a", "toleration_seconds": 5}]}, "train.kubernetes.tolerations.0"),
    ({"image": "k", "gpus": 1}, "train.kubernetes.gpus"),
])
def test_bad_kubernetes_settings_are_refused_with_their_field(kubernetes: dict, field: str) -> None:
    base = {"pipeline": "p", "data": {"source": "d.csv"}, "task": {"type": "regression"}}
    with pytest.raises(ConfigError) as err:
        validate_config({**base, "train": {"launcher": "kubernetes", "kubernetes": kubernetes}}, "p.yaml")
    assert f"'{field}'" in str(err.value) and "\n" not in str(err.value)
