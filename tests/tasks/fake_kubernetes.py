"""A tiny stand-in for the Kubernetes API server: just the endpoints `KubernetesLauncher` calls, on a
real socket on 127.0.0.1, so the real `kubernetes` client (its paths, verbs, bodies, deserialization)
is what talks to it.

The job's life is scripted by how often its status is read: the pods are Pending at the first poll,
Running from the second (the chief logging progress), and at `finish_at` the `outcome` happens:
`succeeded`, `failed` (worker 1 killed, worker 0 following it), `contract` (worker 0 exits with the
model-contract code while the job itself still runs), `hang` (running forever) or `unschedulable`
(pending forever, one pod unschedulable). Every request is
recorded in `calls`, create bodies in `created`.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_http import serve

PROGRESS = [
    "2026-01-01 INFO kiln-train: worker 0/2: 3 epochs x 4 steps, global batch 128, 1,234 parameters",
    "2026-01-01 INFO kiln-train: worker 0 epoch 1/3 loss=0.9000 accuracy=0.6000 (0.5s)",
    "2026-01-01 INFO kiln-train: worker 0 epoch 2/3 loss=0.5000 accuracy=0.8000 (0.5s)",
]
DONE = ["2026-01-01 INFO kiln-train: worker 0 epoch 3/3 loss=0.3000 accuracy=0.9000 (0.5s)",
        "2026-01-01 INFO kiln-train: worker 0 done"]
NOISE = "2026-01-01 I tensorflow/core/some_file.cc:42] collective ops ready"
KILLED_LOG = [NOISE, "2026-01-01 INFO kiln-train: worker 1 epoch 2/3 loss=0.5", "Killed"]
PEER_LOG = [*PROGRESS, "tensorflow.python.framework.errors_impl.UnavailableError: Collective ops is aborted by: "
                       "failed to connect to all addresses"]
CONTRACT_LOG = [NOISE, "train_worker: the model's output 'probabilities' has shape [None, 3]; the task needs 10"]

TFJOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/(?P<ns>[^/]+)/tfjobs(?:/(?P<name>[^/]+))?$")
JOBS = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/]+)(?P<status>/status)?)?$")
SERVICES = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/services(?:/(?P<name>[^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")


class FakeKubernetes:
    def __init__(self, outcome: str = "succeeded", workers: int = 2, finish_at: int = 4,
                 missing_crd: bool = False) -> None:
        self.outcome, self.workers, self.finish_at, self.missing_crd = outcome, workers, finish_at, missing_crd
        self.calls: list[tuple[str, str, dict[str, list[str]]]] = []
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, dict[str, Any]]] = []  # (kind, name, delete options)
        self.patched: list[dict[str, Any]] = []
        self.polls = 0
        self.kind = ""
        self.name = ""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- server

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeKubernetes:
        self._server = serve(self._handle)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def client(self) -> Any:
        from kubernetes import client

        return client.ApiClient(client.Configuration(host=self.url))

    # -- what was asked

    def asked(self, method: str, pattern: str = "") -> list[tuple[str, str, dict[str, list[str]]]]:
        return [c for c in self.calls if c[0] == method and pattern in c[1]]

    # -- the job's scripted life

    @property
    def phase(self) -> str:
        if self.polls <= 1 or self.outcome == "unschedulable":
            return "pending"
        if self.polls < self.finish_at or self.outcome == "hang":
            return "running"
        return self.outcome

    def _pods(self) -> list[dict[str, Any]]:
        if not self.name or self.phase == "pending" and self.polls == 0:
            return []
        return [self._pod(i) for i in range(self.workers)]

    def _pod_name(self, index: int) -> str:
        return f"{self.name}-worker-{index}" if self.kind == "TFJob" else f"{self.name}-{index}-x7k2q"

    def _pod(self, index: int) -> dict[str, Any]:
        phase, state, last_state, restarts = "Running", {"running": {}}, None, 0
        if self.phase == "pending":
            phase, state = "Pending", {"waiting": {"reason": "ContainerCreating"}}
        elif self.phase == "succeeded":
            phase, state = "Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed"}}
        elif self.phase == "failed":
            code = 137 if index == 1 else 1
            phase, state = "Failed", {"terminated": {"exitCode": code, "reason": "Error"}}
        elif self.phase == "contract" and index == 0:
            phase, state = "Failed", {"terminated": {"exitCode": 3, "reason": "Error"}}
        if self.phase == "failed" and self.kind == "TFJob":  # OnFailure: restarted once before giving up
            restarts, last_state = 1, {"terminated": {"exitCode": 137 if index == 1 else 1, "reason": "Error"}}
        key = "training.kubeflow.org/replica-index" if self.kind == "TFJob" else "batch.kubernetes.io/job-completion-index"
        return {
            "metadata": {"name": self._pod_name(index), "namespace": "default",
                         "labels": {"kiln.dev/train-job": self.name, key: str(index)},
                         "annotations": {key: str(index)}},
            "spec": {"containers": [{"name": "tensorflow", "image": "kiln:test"}]},
            "status": {
                "phase": phase,
                "conditions": ([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]
                               if self.phase == "pending" and index == 1 else []),
                "containerStatuses": [] if self.phase == "pending" and index == 1 else [  # not scheduled
                    {"name": "tensorflow", "image": "kiln:test", "imageID": "sha256:0", "ready": phase == "Running",
                     "restartCount": restarts, "state": state, **({"lastState": last_state} if last_state else {})}],
            },
        }

    def _log(self, pod: str) -> str:
        index = next(i for i in range(self.workers) if self._pod_name(i) == pod)
        if self.phase == "pending":
            return ""
        if self.phase == "failed":
            lines = KILLED_LOG if index == 1 else PEER_LOG
        elif self.phase == "contract" and index == 0:
            lines = CONTRACT_LOG
        elif self.phase == "succeeded":
            lines = [NOISE, *PROGRESS, *DONE]
        else:
            lines = [NOISE, *PROGRESS[: self.polls - 1]]
        return "".join(f"{line}\n" for line in lines)

    def _conditions(self) -> list[dict[str, Any]]:
        created = {"type": "Created", "status": "True", "reason": "Created"}
        if self.phase == "succeeded":
            done = "Succeeded" if self.kind == "TFJob" else "Complete"
            return [created, {"type": done, "status": "True", "reason": "JobSucceeded"}]
        if self.phase == "failed":
            return [created, {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                              "message": "Job has reached the specified backoff limit"}]
        return [created] if self.kind == "TFJob" else []

    # -- requests

    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(req.path)
        query = parse_qs(url.query)
        length = int(req.headers.get("Content-Length") or 0)
        body = json.loads(req.rfile.read(length)) if length else {}
        with self._lock:
            self.calls.append((method, url.path, query))
            try:
                status, answer = self._route(method, url.path, query, body)
            except KeyError:
                status, answer = 404, _status(404, "NotFound", f"{url.path} not found")
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        req.send_response(status)
        req.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]) -> tuple[int, Any]:
        if m := TFJOBS.match(path):
            if self.missing_crd:
                return 404, _status(404, "NotFound", "the server could not find the requested resource")
            return self._object("TFJob", method, m["name"], body)
        if m := JOBS.match(path):
            return self._object("Job", method, m["name"], body)
        if m := SERVICES.match(path):
            if method == "POST":
                self.created.append(body)
                return 201, {**body, "metadata": {**body["metadata"], "uid": str(uuid.uuid4())}}
            if method == "DELETE":
                self.deleted.append(("Service", m["name"], body))
                return 200, _status(200, "Success", "")
        if PODS.match(path) and method == "GET":
            wanted = query.get("labelSelector", [""])[0]
            pods = [p for p in self._pods() if wanted == f"kiln.dev/train-job={p['metadata']['labels']['kiln.dev/train-job']}"]
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}
        if (m := POD_LOG.match(path)) and method == "GET":
            if self.phase == "pending":
                return 400, _status(400, "BadRequest", f'container "tensorflow" in pod "{m["pod"]}" is waiting to '
                                                       f'start: ContainerCreating')
            return 200, self._log(m["pod"])
        raise KeyError(path)

    def _object(self, kind: str, method: str, name: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        if method == "POST":
            self.kind, self.name = kind, body["metadata"]["name"]
            self.created.append(body)
            self.uid = str(uuid.uuid4())
            return 201, {**body, "metadata": {**body["metadata"], "uid": self.uid}}
        if name != self.name:
            raise KeyError(name)
        obj = self.created[0]
        if method == "PATCH":
            self.patched.append(body)
            return 200, {**obj, "metadata": {**obj["metadata"], "uid": self.uid}}
        if method == "DELETE":
            self.deleted.append((kind, name, body))
            return 200, _status(200, "Success", "")
        self.polls += 1
        return 200, {**obj, "metadata": {**obj["metadata"], "uid": self.uid}, "status": {"conditions": self._conditions()}}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
            "message": message, "reason": reason, "code": code}
