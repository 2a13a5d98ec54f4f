"""The Kubernetes objects of a training worker group, rendered from `train.kubernetes`: pure functions of the
settings, the job's name and the spec's URI, submitted by `tasks.training.k8s_launcher`.

- `operator: tfjob` renders a `kubeflow.org/v1` TFJob: `tfReplicaSpecs.Worker` with N replicas,
  restartPolicy OnFailure, `runPolicy.backoffLimit` = train.max_restarts. The training operator sets
  TF_CONFIG in the container named `tensorflow` and gives every replica a Service.
- `operator: indexed-job` renders, for clusters without the operator, a `batch/v1` Job with
  completionMode Indexed (completions = parallelism = N, backoffLimit = train.max_restarts) and a
  headless Service named like the Job; pods get hostnames `<job>-<index>` under that subdomain, and
  `tasks.training.k8s_entry` builds TF_CONFIG from `JOB_COMPLETION_INDEX`. The Job is rendered
  suspended: the launcher resumes it once the Service exists.

Both set activeDeadlineSeconds and ttlSecondsAfterFinished, so even a launcher killed with SIGKILL
leaves nothing running past the deadline. The objects are validated against the Kubernetes OpenAPI
schemas in tests/tasks/test_k8s_manifests.py.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from common import LEGACY_KERAS_ENV
from tasks.config import KubernetesTraining
from tasks.training.launcher import CONTRACT_EXIT_CODE

CONTAINER = "tensorflow"  # the training operator sets TF_CONFIG and the port in the container of this name
PORT_NAME = "tfjob-port"  # ... and the port of this name
JOB_LABEL = "kiln.dev/train-job"
TFJOB_GROUP, TFJOB_VERSION, TFJOB_PLURAL = "kubeflow.org", "v1", "tfjobs"
TTL_AFTER_FINISHED_SECONDS = 600
MAX_NAME = 40  # pod names add "-worker-NN" (TFJob) or "-NN-xxxxx" (Job); hostnames stay under 63


def job_name(prefix: str) -> str:
    """A DNS-1035 label, unique per submission (a retried task never meets its predecessor's job)."""
    slug = re.sub(r"[^a-z0-9]+", "-", prefix.lower()).strip("-")
    slug = slug if slug[:1].isalpha() else f"kiln-{slug}"
    return f"{slug[:MAX_NAME - 7].rstrip('-')}-{secrets.token_hex(3)}"


def _container(settings: KubernetesTraining, command: list[str]) -> dict[str, Any]:
    res = settings.resources
    requests: dict[str, Any] = {k: v for k, v in (("cpu", res.cpu), ("memory", res.memory)) if v}
    limits: dict[str, Any] = {"memory": res.memory} if res.memory else {}
    if res.gpu:  # extended resources: requests must equal limits
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(res.gpu)
    env = {**LEGACY_KERAS_ENV, "TF_CPP_MIN_LOG_LEVEL": "1", "PYTHONUNBUFFERED": "1", **settings.env}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "ports": [{"name": PORT_NAME, "containerPort": settings.port, "protocol": "TCP"}],
    }
    if requests or limits:
        container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    if settings.env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.env_from_secret}}]
    return container


def _pod_template(settings: KubernetesTraining, labels: dict[str, str], command: list[str],
                  restart_policy: str, **pod_fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"restartPolicy": restart_policy, "containers": [_container(settings, command)],
                            **pod_fields}
    if settings.node_selector:
        spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        spec["tolerations"] = [
            {key: value for key, value in (("key", t.key), ("operator", t.operator), ("value", t.value),
                                           ("effect", t.effect), ("tolerationSeconds", t.toleration_seconds))
             if value is not None}
            for t in settings.tolerations]
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


def _labels(name: str, labels: dict[str, str]) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "kiln", "app.kubernetes.io/component": "train-worker", **labels,
            JOB_LABEL: name}


def render_tfjob(settings: KubernetesTraining, name: str, spec_uri: str, num_workers: int,
                 timeout_seconds: int, max_restarts: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = _labels(name, labels or {})
    command = ["python", "-m", "tasks.training.worker", "--spec", spec_uri]
    return {
        "apiVersion": f"{TFJOB_GROUP}/{TFJOB_VERSION}",
        "kind": "TFJob",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "runPolicy": {"backoffLimit": max_restarts, "activeDeadlineSeconds": int(timeout_seconds),
                          "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_SECONDS, "cleanPodPolicy": "Running"},
            "successPolicy": "AllWorkers",  # every worker takes part in exporting: wait for all of them
            "tfReplicaSpecs": {"Worker": {
                "replicas": num_workers,
                "restartPolicy": "OnFailure",
                "template": _pod_template(settings, labels, command, "OnFailure"),
            }},
        },
    }


def render_indexed_job(settings: KubernetesTraining, name: str, spec_uri: str, num_workers: int,
                       timeout_seconds: int, max_restarts: int,
                       labels: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Job (created suspended) and its headless Service, both named `name`."""
    labels = _labels(name, labels or {})
    command = ["python", "-m", "tasks.training.k8s_entry", "--spec", spec_uri, "--job", name,
               "--workers", str(num_workers), "--service", name, "--port", str(settings.port)]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": num_workers,
            "parallelism": num_workers,
            "backoffLimit": max_restarts,
            "activeDeadlineSeconds": int(timeout_seconds),
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_SECONDS,
            "suspend": True,  # resumed once the Service exists
            # A worker that rejects the model fails the Job at once: a restart cannot fix it.
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                "containerName": CONTAINER, "operator": "In", "values": [CONTRACT_EXIT_CODE]}}]},
            "template": _pod_template(settings, labels, command, "Never", subdomain=name),
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_LABEL: name},
            "publishNotReadyAddresses": True,  # peers resolve before they are Ready
            "ports": [{"name": PORT_NAME, "port": settings.port, "targetPort": settings.port, "protocol": "TCP"}],
        },
    }
    return job, service
