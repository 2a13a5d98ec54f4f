"""The training worker group as Kubernetes pods: `KubernetesLauncher`, the `WorkerLauncher` of
`train.launcher: kubernetes`.

It writes the spec to the step's work folder on object storage (pods read it from there; every path in the
spec must be a URL too), renders the job from `train.kubernetes` (`tasks.training.k8s_manifests`: a Kubeflow
TFJob, or an Indexed Job + headless Service), submits it with the `kubernetes` client, relays the chief's
progress lines into the task log, waits with the same deadline as the local launcher
(`train.worker_timeout_seconds`) and deletes what it created however the wait ends (SIGTERM of the task
included). An Indexed Job is created suspended, its Service is owned by it (garbage-collected with it), then
the Job is resumed: no pod starts before its peers' names resolve.

Nothing here has run against a real cluster: the client calls are driven against a fake API server
(tests/tasks/test_k8s_launcher.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tasks.config import KubernetesTraining
from tasks.models.contract import ModelContractError
from tasks.training.k8s_manifests import (
    CONTAINER,
    JOB_LABEL,
    TFJOB_GROUP,
    TFJOB_PLURAL,
    TFJOB_VERSION,
    job_name,
    render_indexed_job,
    render_tfjob,
)
from tasks.training.launcher import (
    CONTRACT_EXIT_CODE,
    ERROR_TAIL_LINES,
    PROGRESS_MARK,
    Recovery,
    TrainError,
    epochs_done,
    sigterm_unwinds,
)
from tasks.training.spec import WorkerSpec, write_spec

log = logging.getLogger(__name__)

INDEX_KEYS = ("training.kubeflow.org/replica-index", "batch.kubernetes.io/job-completion-index")


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def require_object_storage(work_uri: str, spec: WorkerSpec) -> None:
    """Pods share nothing with this machine: the work folder and every path in the spec must be URLs."""
    if not is_remote(work_uri):
        raise TrainError(f"train.launcher kubernetes needs an artifact root on object storage (s3://..., gs://...): "
                         f"pods cannot read {work_uri}")
    for field_name, path in spec.paths():
        if not is_remote(path):
            raise TrainError(f"train.launcher kubernetes: the worker spec's {field_name} is a local path ({path}); "
                             f"pods can only read and write object storage")


@dataclass
class _Seen:
    """What the wait loop has relayed and observed so far."""

    relayed: dict[tuple[str, int], int] = field(default_factory=dict)  # (pod, restart count) -> chars
    restarts: int = 0


@dataclass
class KubernetesLauncher:
    settings: KubernetesTraining
    work_uri: str
    name_prefix: str
    api_client: Any = None  # kubernetes.client.ApiClient; default: in-cluster config, else the kubeconfig
    poll_seconds: float = 2.0
    labels: dict[str, str] = field(default_factory=dict)

    def run(self, spec: WorkerSpec, num_workers: int, timeout_seconds: float,
            max_restarts: int = 0) -> Recovery:
        require_object_storage(self.work_uri, spec)
        name = job_name(self.name_prefix)
        spec_uri = f"{self.work_uri.rstrip('/')}/{name}.spec.json"
        try:
            write_spec(spec, spec_uri)
        except (OSError, ValueError, ImportError) as exc:
            raise TrainError(f"cannot write the worker spec to {spec_uri}: {str(exc).splitlines()[0]}") from None
        resumed_from_epoch = epochs_done(spec)  # > 0 when an earlier task try left a backup
        self.client  # noqa: B018 - credentials first: without them there is nothing to create or delete
        job = _TFJob(self, name) if self.settings.operator == "tfjob" else _IndexedJob(self, name)
        deadline = time.monotonic() + timeout_seconds
        with sigterm_unwinds():
            try:
                job.create(spec_uri, num_workers, int(timeout_seconds), max_restarts)
                log.info("train: %s %s/%s submitted: %d worker pod(s) of %s", job.kind, self.settings.namespace,
                         name, num_workers, self.settings.image)
                restarts = self._wait(job, num_workers, deadline, timeout_seconds)
            finally:
                job.delete()
        return Recovery(restarts, resumed_from_epoch)

    # -- clients

    @property
    def client(self) -> Any:
        if self.api_client is None:
            self.api_client = _default_api_client()
        return self.api_client

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.client)

    # -- waiting

    def _wait(self, job: _Job, num_workers: int, deadline: float, timeout_seconds: float) -> int:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        seen, pods = _Seen(), []
        while True:
            try:
                pods = self._pods(job.name)
                self._check_contract(pods)
                self._relay(pods, seen)
                seen.restarts = max(seen.restarts, job.restarts(pods))
                state, message = job.state()
            except ApiException as exc:
                if exc.status == 404:
                    raise TrainError(f"train workers on Kubernetes: {job.kind} {self.settings.namespace}/{job.name} "
                                     f"disappeared while running (deleted outside kiln?)") from None
                state, message = "unknown", f"{exc.status} {_api_message(exc)}"
            except HTTPError as exc:  # the API server is unreachable for a moment: the deadline decides
                state, message = "unknown", str(exc).splitlines()[0]
            if state == "unknown":
                log.warning("train: polling %s %s failed (%s); trying again", job.kind, job.name, message)
            if state == "succeeded":
                self._relay(self._pods(job.name), seen)
                return seen.restarts
            if state == "failed":  # the pods as they ended, not as they were before this status
                raise self._failure(job, self._pods(job.name), num_workers, message)
            if time.monotonic() > deadline:
                raise TrainError(f"train workers on Kubernetes ({job.kind} {self.settings.namespace}/{job.name}) "
                                 f"still running after the {timeout_seconds:g}s deadline (worker_timeout_seconds); "
                                 f"deleted. Pods: {_pod_states(pods) or 'none created'}")
            time.sleep(self.poll_seconds)

    def _pods(self, name: str) -> list[Any]:
        pods = self.core.list_namespaced_pod(self.settings.namespace, label_selector=f"{JOB_LABEL}={name}").items
        return sorted(pods, key=lambda p: (_index(p), p.metadata.name))

    def _log(self, pod: Any, previous: bool = False) -> str:
        from kubernetes.client.exceptions import ApiException

        try:
            # The raw response: kubernetes 36 returns the log as the repr of its bytes ("b'...'",
            # kubernetes-client/python#2596), and older clients re-quote log lines that look like JSON (#811).
            response = self.core.read_namespaced_pod_log(pod.metadata.name, self.settings.namespace,
                                                         container=CONTAINER, previous=previous,
                                                         _preload_content=False)
            return response.data.decode("utf-8", errors="replace")
        except ApiException as exc:  # 400 while the container is still being created
            if exc.status in (400, 404):
                return ""
            raise

    def _relay(self, pods: list[Any], seen: _Seen) -> None:
        """Copy the chief's progress lines into this task's log, as the local launcher does; the log is
        re-read each poll (a few lines an epoch), a restarted container's from its start."""
        chief = next((p for p in pods if _index(p) == 0 and _started(p)), None)
        if chief is None:
            return
        key = (chief.metadata.name, _restart_count(chief))
        text = self._log(chief)
        offset = seen.relayed.get(key, 0)
        complete = text[: text.rfind("\n") + 1]
        if len(complete) < offset:
            offset = 0
        for line in complete[offset:].splitlines():
            if PROGRESS_MARK in line:
                log.info("%s", line.split(PROGRESS_MARK, 1)[1].strip())
        seen.relayed[key] = len(complete)

    def _check_contract(self, pods: list[Any]) -> None:
        for pod in pods:
            if CONTRACT_EXIT_CODE in _exit_codes(pod):
                line = _last_lines(self._failed_log(pod), 1)
                raise ModelContractError((line[0] if line else f"pod {pod.metadata.name} rejected the model")
                                         .removeprefix("train_worker: "))

    def _failed_log(self, pod: Any) -> str:
        """The log of the container that failed: the current one if it is terminated, else the previous."""
        status = _container_status(pod)
        terminated = status is not None and status.state is not None and status.state.terminated is not None
        return self._log(pod, previous=not terminated and _restart_count(pod) > 0)

    def _failure(self, job: _Job, pods: list[Any], num_workers: int, message: str) -> TrainError:
        failed = [p for p in pods if any(code != 0 for code in _exit_codes(p)) or p.status.phase == "Failed"]
        where = f"{job.kind} {self.settings.namespace}/{job.name} failed ({message})"
        if not failed:
            return TrainError(f"train workers on Kubernetes: {where}. Pods: {_pod_states(pods) or 'none created'}")
        # A killed worker takes its peers down with it: one killed by a signal (exit > 128) is the cause.
        pod = min(failed, key=lambda p: (not any(c > 128 for c in _exit_codes(p)), _index(p)))
        codes = [c for c in _exit_codes(pod) if c != 0]
        how = f"exit code {codes[-1]}" if codes else f"phase {pod.status.phase}"
        lines = _last_lines(self._failed_log(pod), ERROR_TAIL_LINES)
        said = f": {lines[-1]}" if lines else ""
        tail = "\n".join(f"  | {line}" for line in lines)
        return TrainError(f"train worker {_index(pod)} of {num_workers} (pod {pod.metadata.name}) failed with {how}; "
                          f"{where}{said}" + (f"\n{tail}" if tail else ""))


# --- the two kinds of job --------------------------------------------------------------------------------


class _Job:
    kind = ""

    def __init__(self, launcher: KubernetesLauncher, name: str) -> None:
        self.launcher, self.name = launcher, name
        self.namespace = launcher.settings.namespace

    def create(self, spec_uri: str, num_workers: int, timeout_seconds: int, max_restarts: int) -> None:
        raise NotImplementedError

    def state(self) -> tuple[str, str]:
        """running, succeeded or failed, with the reason the API gives."""
        raise NotImplementedError

    def restarts(self, pods: list[Any]) -> int:
        raise NotImplementedError

    def delete(self) -> None:
        raise NotImplementedError

    def _submit(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call(*args, **kwargs)
        except ApiException as exc:
            hint = (" (is the Kubeflow training operator installed? train.kubernetes.operator: indexed-job needs "
                    "none)" if exc.status == 404 and self.kind == "TFJob" else "")
            raise TrainError(f"cannot create {what} {self.namespace}/{self.name}: {exc.status} "
                             f"{_api_message(exc)}{hint}") from None
        except HTTPError as exc:
            raise TrainError(f"cannot reach the Kubernetes API to create {what} {self.name}: "
                             f"{str(exc).splitlines()[0]}") from None

    def _delete(self, what: str, call: Any, *args: Any, **kwargs: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            call(*args, **kwargs)
            log.info("train: deleted %s %s/%s", what, self.namespace, self.name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("train: could not delete %s %s/%s (%s %s); delete it with kubectl -n %s delete %s %s",
                            what, self.namespace, self.name, exc.status, _api_message(exc), self.namespace,
                            what.lower(), self.name)
        except Exception as exc:  # noqa: BLE001 - cleanup reports and goes on; the job's TTL is the backstop
            log.warning("train: could not delete %s %s/%s (%s); delete it with kubectl -n %s delete %s %s", what,
                        self.namespace, self.name, str(exc).splitlines()[0], self.namespace, what.lower(), self.name)


class _TFJob(_Job):
    kind = "TFJob"

    @property
    def api(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.launcher.client)

    def create(self, spec_uri: str, num_workers: int, timeout_seconds: int, max_restarts: int) -> None:
        body = render_tfjob(self.launcher.settings, self.name, spec_uri, num_workers, timeout_seconds, max_restarts,
                            self.launcher.labels)
        self._submit("TFJob", self.api.create_namespaced_custom_object, TFJOB_GROUP, TFJOB_VERSION, self.namespace,
                     TFJOB_PLURAL, body)

    def state(self) -> tuple[str, str]:
        obj = self.api.get_namespaced_custom_object(TFJOB_GROUP, TFJOB_VERSION, self.namespace, TFJOB_PLURAL,
                                                    self.name)
        conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []
                      if c.get("status") == "True"}
        for state, kind in (("failed", "Failed"), ("succeeded", "Succeeded")):
            if kind in conditions:
                c = conditions[kind]
                return state, ": ".join(x for x in (c.get("reason"), c.get("message")) if x)
        return "running", ""

    def restarts(self, pods: list[Any]) -> int:
        return sum(_restart_count(p) for p in pods)

    def delete(self) -> None:
        from kubernetes import client

        self._delete("TFJob", self.api.delete_namespaced_custom_object, TFJOB_GROUP, TFJOB_VERSION, self.namespace,
                     TFJOB_PLURAL, self.name, body=client.V1DeleteOptions(propagation_policy="Foreground"))


class _IndexedJob(_Job):
    kind = "Job"

    @property
    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.launcher.client)

    def create(self, spec_uri: str, num_workers: int, timeout_seconds: int, max_restarts: int) -> None:
        job, service = render_indexed_job(self.launcher.settings, self.name, spec_uri, num_workers, timeout_seconds,
                                          max_restarts, self.launcher.labels)
        created = self._submit("Job", self.batch.create_namespaced_job, self.namespace, job)
        service["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": self.name,
                                                   "uid": created.metadata.uid, "blockOwnerDeletion": True}]
        self._submit("Service", self.launcher.core.create_namespaced_service, self.namespace, service)
        self._submit("Job", self.batch.patch_namespaced_job, self.name, self.namespace, {"spec": {"suspend": False}})

    def state(self) -> tuple[str, str]:
        status = self.batch.read_namespaced_job_status(self.name, self.namespace).status
        for c in (status.conditions or []) if status else []:
            if c.status == "True" and c.type in ("Failed", "Complete"):
                return ("failed" if c.type == "Failed" else "succeeded",
                        ": ".join(x for x in (c.reason, c.message) if x))
        return "running", ""

    def restarts(self, pods: list[Any]) -> int:
        return len([p for p in pods if p.status and p.status.phase == "Failed"])

    def delete(self) -> None:
        from kubernetes import client

        background = client.V1DeleteOptions(propagation_policy="Background")
        self._delete("Job", self.batch.delete_namespaced_job, self.name, self.namespace, body=background)
        self._delete("Service", self.launcher.core.delete_namespaced_service, self.name, self.namespace,
                     body=background)


# --- pod status helpers ----------------------------------------------------------------------------------


def _index(pod: Any) -> int:
    meta = pod.metadata
    for source in (meta.labels or {}, meta.annotations or {}):
        for key in INDEX_KEYS:
            if str(source.get(key, "")).isdigit():
                return int(source[key])
    return 1_000_000  # unknown: after every indexed pod


def _container_status(pod: Any) -> Any:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return next((s for s in statuses if s.name == CONTAINER), None)


def _restart_count(pod: Any) -> int:
    status = _container_status(pod)
    return status.restart_count if status is not None else 0


def _started(pod: Any) -> bool:
    return bool(pod.status and pod.status.phase in ("Running", "Succeeded", "Failed"))


def _exit_codes(pod: Any) -> Iterator[int]:
    status = _container_status(pod)
    for state in (status.state, status.last_state) if status is not None else ():
        if state is not None and state.terminated is not None:
            yield state.terminated.exit_code


def _pod_states(pods: list[Any]) -> str:
    """`<pod> Pending (Unschedulable: 0/3 nodes ...)`, one per pod: why a job never started."""
    shown = []
    for pod in pods:
        why = ""
        status = _container_status(pod)
        if status is not None and status.state is not None and status.state.waiting is not None:
            why = status.state.waiting.reason or ""
        for condition in (pod.status.conditions or []) if pod.status else []:
            if condition.status == "False" and condition.reason and not why:
                why = f"{condition.reason}: {condition.message or ''}".strip(": ")
        phase = pod.status.phase if pod.status else "Unknown"
        shown.append(f"{pod.metadata.name} {phase}" + (f" ({why})" if why else ""))
    return ", ".join(shown)


def _last_lines(text: str, count: int) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-count:]


def _api_message(exc: Any) -> str:
    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def _default_api_client() -> Any:
    import os

    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config()
    except config.ConfigException as exc:
        raise TrainError(f"train.launcher kubernetes: no cluster credentials (in-cluster service account or a "
                         f"kubeconfig): {str(exc).splitlines()[0]}") from None
    return client.ApiClient()
