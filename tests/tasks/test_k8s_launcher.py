"""KubernetesLauncher against a fake API server (tests/tasks/fake_kubernetes.py) with the real
`kubernetes` client: submit, poll, relay the chief's progress into the task log, fail in one line
naming the pod, hit the deadline, and delete what it created every time (SIGTERM included).
No cluster exists here; nothing in this file has run against a real one."""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid

import pytest

from tasks.config import KubernetesTraining, TrainConfig
from tasks.context import StepContext
from tasks.models.contract import ModelContractError
from tasks.training.k8s_launcher import KubernetesLauncher
from tasks.training.k8s_manifests import JOB_LABEL
from tasks.training.launch import launcher_for
from tasks.training.launcher import LocalProcessLauncher, TrainError
from tasks.training.spec import TrainSpec, read_spec
from tests.tasks.conftest import worker_spec
from tests.tasks.fake_kubernetes import DONE, PROGRESS, FakeKubernetes

POLL = 0.02


@pytest.fixture
def work_uri() -> str:
    return f"memory://kiln-test/{uuid.uuid4().hex}/train/.work"  # object storage as far as the launcher knows


def spec_for(work_uri: str) -> TrainSpec:
    return worker_spec(work_uri)


def run(fake: FakeKubernetes, work_uri: str, operator: str = "tfjob", timeout: float = 30, workers: int = 2,
        max_restarts: int = 2):
    launcher = KubernetesLauncher(KubernetesTraining(image="kiln:test", operator=operator), work_uri=work_uri,
                                  name_prefix="kiln-churn-train", api_client=fake.client(), poll_seconds=POLL)
    return launcher.run(spec_for(work_uri), workers, timeout, max_restarts)


@pytest.fixture
def fakes():
    """FakeKubernetes(**kwargs), started; stopped after the test."""
    started: list[FakeKubernetes] = []

    def make(**kwargs) -> FakeKubernetes:
        started.append(FakeKubernetes(**kwargs).start())
        return started[-1]

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def fake(fakes) -> FakeKubernetes:
    return fakes()


def relayed(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tasks.training.k8s_launcher" and r.levelno == logging.INFO
            and not r.getMessage().startswith("train:")]


def progress(lines: list[str]) -> list[str]:
    return [line.split("kiln-train:", 1)[1].strip() for line in lines]


def test_a_tfjob_is_submitted_polled_relayed_and_deleted(fake, work_uri, caplog) -> None:
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    recovery = run(fake, work_uri)
    print(f"TFJob run against the fake API server: {time.monotonic() - started:.2f}s, {len(fake.calls)} requests")

    [created] = fake.created
    name = created["metadata"]["name"]
    assert created["kind"] == "TFJob" and created["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    [(method, path, _)] = [fake.calls[0]]
    assert (method, path) == ("POST", "/apis/kubeflow.org/v1/namespaces/default/tfjobs")
    spec_uri = created["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"][-1]
    assert spec_uri == f"{work_uri}/{name}.spec.json"
    assert read_spec(spec_uri) == spec_for(work_uri), "the pods read the spec the step built"
    assert len(fake.asked("GET", f"/tfjobs/{name}")) == fake.finish_at, "polled until Succeeded, then stopped"
    listed = [q for _, path, q in fake.asked("GET", "/pods") if path.endswith("/pods")]
    assert len(listed) > fake.finish_at and {q["labelSelector"][0] for q in listed} == {f"{JOB_LABEL}={name}"}
    logs = fake.asked("GET", "/log")
    assert logs and {p.rsplit("/", 2)[1] for _, p, _ in logs} == {f"{name}-worker-0"}, "the chief's log only"
    assert all(q["container"] == ["tensorflow"] for _, _, q in logs)
    assert relayed(caplog) == progress(PROGRESS + DONE), "every progress line once, in order; no TF noise"
    assert fake.calls[-1][:2] == ("DELETE", f"/apis/kubeflow.org/v1/namespaces/default/tfjobs/{name}")
    assert fake.deleted == [("TFJob", name, {"propagationPolicy": "Foreground"})]
    assert (recovery.restarts, recovery.resumed_from_epoch) == (0, 0)


def test_an_indexed_job_gets_its_service_before_it_starts_and_both_are_deleted(fake, work_uri, caplog) -> None:
    caplog.set_level(logging.INFO)
    run(fake, work_uri, operator="indexed-job", workers=3)
    job, service = fake.created
    name = job["metadata"]["name"]
    assert (job["kind"], job["spec"]["suspend"], job["spec"]["completions"]) == ("Job", True, 3)
    assert service["kind"] == "Service" and service["metadata"]["name"] == name
    [owner] = service["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", name, fake.uid), "garbage-collected with the Job"
    writes = [(m, p) for m, p, _ in fake.calls if m != "GET"]
    assert writes[:3] == [("POST", "/apis/batch/v1/namespaces/default/jobs"),
                          ("POST", "/api/v1/namespaces/default/services"),
                          ("PATCH", f"/apis/batch/v1/namespaces/default/jobs/{name}")]
    assert fake.patched == [{"spec": {"suspend": False}}]
    assert fake.asked("GET", f"/jobs/{name}/status")
    assert relayed(caplog) == progress(PROGRESS + DONE)
    assert fake.deleted == [("Job", name, {"propagationPolicy": "Background"}),
                            ("Service", name, {"propagationPolicy": "Background"})]


@pytest.mark.parametrize("operator", ["tfjob", "indexed-job"])
def test_a_failed_job_names_the_killed_pod_and_its_last_lines_and_is_deleted(fakes, work_uri, operator) -> None:
    fake = fakes(outcome="failed")
    with pytest.raises(TrainError) as err:
        run(fake, work_uri, operator=operator)
    first, *tail = str(err.value).splitlines()
    name = fake.name
    pod = f"{name}-worker-1" if operator == "tfjob" else f"{name}-1-x7k2q"
    kind = "TFJob" if operator == "tfjob" else "Job"
    assert first == (f"train worker 1 of 2 (pod {pod}) failed with exit code 137; {kind} default/{name} failed "
                     f"(BackoffLimitExceeded: Job has reached the specified backoff limit): Killed")
    assert tail[-1] == "  | Killed" and any("worker 1 epoch 2/3" in line for line in tail)
    assert [d[0] for d in fake.deleted] == ([kind] if operator == "tfjob" else ["Job", "Service"])
    print(first)


def test_a_worker_that_rejects_the_model_fails_at_once_without_waiting_for_retries(fakes, work_uri) -> None:
    fake = fakes(outcome="contract")
    with pytest.raises(ModelContractError) as err:
        run(fake, work_uri)
    assert str(err.value) == "the model's output 'probabilities' has shape [None, 3]; the task needs 10"
    assert fake.deleted and fake.deleted[0][0] == "TFJob"


def test_the_deadline_deletes_the_job_and_says_where_each_pod_stood(fakes, work_uri) -> None:
    fake = fakes(outcome="hang")
    started = time.monotonic()
    with pytest.raises(TrainError) as err:
        run(fake, work_uri, timeout=0.5)
    took = time.monotonic() - started
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"train workers on Kubernetes (TFJob default/{fake.name}) still running after the "
                              f"0.5s deadline (worker_timeout_seconds); deleted. Pods: {fake.name}-worker-0 Running")
    assert fake.deleted == [("TFJob", fake.name, {"propagationPolicy": "Foreground"})]
    assert took < 3, f"the deadline is kept ({took:.2f}s)"


def test_a_job_that_never_schedules_says_why_at_the_deadline(fakes, work_uri) -> None:
    fake = fakes(outcome="unschedulable")
    with pytest.raises(TrainError) as err:
        run(fake, work_uri, timeout=0.3)
    assert str(err.value).endswith(f"Pods: {fake.name}-worker-0 Pending (ContainerCreating), {fake.name}-worker-1 "
                                   f"Pending (Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.)")
    assert [d[0] for d in fake.deleted] == ["TFJob"]


def test_a_cluster_without_the_training_operator_is_told_what_to_use(fakes, work_uri) -> None:
    fake = fakes(missing_crd=True)
    with pytest.raises(TrainError) as err:
        run(fake, work_uri)
    message = str(err.value)
    assert "\n" not in message and message.startswith("cannot create TFJob default/kiln-churn-train-")
    assert "404" in message and "operator: indexed-job" in message
    assert fake.asked("DELETE"), "cleanup is tried even when the create failed"


def test_sigterm_of_the_task_deletes_the_job_then_takes_its_usual_effect(fakes, work_uri) -> None:
    fake = fakes(outcome="hang")
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    timer = threading.Timer(0.3, lambda: signal.raise_signal(signal.SIGTERM))
    try:
        timer.start()
        with pytest.raises(TrainError, match="got SIGTERM"):
            run(fake, work_uri, timeout=30)
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert fake.deleted == [("TFJob", fake.name, {"propagationPolicy": "Foreground"})]
    assert got == [signal.SIGTERM], "after cleanup, the task's own SIGTERM handling runs"


def test_nothing_is_submitted_with_a_local_artifact_root(fake, tmp_path) -> None:
    with pytest.raises(TrainError, match="needs an artifact root on object storage"):
        run(fake, str(tmp_path / "train" / ".work"))
    assert fake.calls == []


def test_the_config_picks_the_launcher(tmp_path) -> None:
    ctx = StepContext(artifact_root="s3://bucket/artifacts", pipeline="churn", run_id="manual__1", step="optimize")
    local = launcher_for(TrainConfig(), StepContext(artifact_root=str(tmp_path), pipeline="churn", run_id="r",
                                                    step="train"))
    assert isinstance(local, LocalProcessLauncher) and local.work_dir == tmp_path / "churn" / "r" / "train" / ".work"
    train = TrainConfig(launcher="kubernetes", kubernetes=KubernetesTraining(image="kiln:1"))
    remote = launcher_for(train, ctx)
    assert isinstance(remote, KubernetesLauncher)
    assert remote.work_uri == "s3://bucket/artifacts/churn/manual__1/optimize/.work"
    assert remote.name_prefix == "kiln-churn-optimize"
    assert remote.labels == {"kiln.dev/pipeline": "churn", "kiln.dev/step": "optimize"}


def test_without_cluster_credentials_nothing_is_tried_and_one_line_says_so(monkeypatch, tmp_path, work_uri) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    launcher = KubernetesLauncher(KubernetesTraining(image="kiln:test"), work_uri=work_uri, name_prefix="kiln-x-train")
    with pytest.raises(TrainError) as err:
        launcher.run(spec_for(work_uri), 2, 30)
    assert str(err.value).startswith("train.launcher kubernetes: no cluster credentials (in-cluster service "
                                     "account or a kubeconfig): ")
    assert "\n" not in str(err.value)
