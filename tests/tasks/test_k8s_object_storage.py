"""Training whose workers share only the artifact store (`train.launcher: kubernetes` on an `s3://` root),
without a cluster, against moto's S3 server on loopback.

The real worker processes run through the local launcher, on the very spec the train and optimize steps
build for pods: every output path an `s3://` URL, nothing local (checked as `KubernetesLauncher` checks).
That is exactly what a pod does, so the SavedModels, metrics, backups and the fine-tune report go through
S3 and the steps read them back from there; a worker killed after an epoch resumes from the backup synced
to S3 (the restarted processes have fresh local folders). Then the `KubernetesLauncher` against the fake
API server accepts the spec a real train step builds on an `s3://` root; the fake runs no pods, so only
what is submitted is checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from common import storage
from tasks.artifacts.model import METRICS_FILE, SAVED_MODEL_DIR, Model
from tasks.artifacts.optimized import OptimizedModel
from tasks.snapshot import Deployment, resolve_run
from tasks.step_runner import run_step, run_steps
from tasks.training import launch
from tasks.training.k8s_launcher import is_remote, require_object_storage
from tasks.training.launcher import WORKERS_FILE, Recovery, TrainError, read_metrics, run_workers
from tasks.training.spec import WorkerSpec, read_spec
from tests.tasks.conftest import digits_pipeline
from tests.tasks.fake_kubernetes import FakeKubernetes

ON_KUBERNETES = {"launcher": "kubernetes", "kubernetes": {"image": "kiln:test"}}


@pytest.fixture(scope="module")
def s3_inputs(module_s3, tiny_digits_csv: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Examples and transform of the tiny digits set on S3 (each test trains its own way)."""
    root = tmp_path_factory.mktemp("k8s-s3-inputs")
    deployment = Deployment(artifact_root=module_s3.url("k8s-inputs"), tracking_uri=mlflow_store)
    run = resolve_run(str(digits_pipeline(root, tiny_digits_csv)), {}, deployment, "manual__k8s-inputs")
    out = run_steps(run, ["ingest", "validate", "transform"])
    return {"examples": out["examples"], "transform": out["transform"]}


def s3_run(s3, root: Path, csv: Path, mlflow_store: str, **sections: Any) -> tuple[str, str]:
    """A run on an s3:// artifact root of its own; (run URI, that root)."""
    artifact_root = s3.url("k8s", uuid.uuid4().hex[:8])
    train = {**ON_KUBERNETES, "num_workers": 2, **sections.pop("train", {})}
    config = digits_pipeline(root, csv, train=train, **sections)
    run = resolve_run(str(config), {}, Deployment(artifact_root=artifact_root, tracking_uri=mlflow_store),
                      f"manual__{root.name}")
    return run, artifact_root


def s3_keys(s3, uri: str) -> list[str]:
    prefix = uri.removeprefix(f"s3://{s3.bucket}/").rstrip("/") + "/"
    return [key[len(prefix):] for key in s3.keys(prefix)]


@dataclass
class PodsHere:
    """The pods of `KubernetesLauncher`, played by local worker processes: the spec must hold URLs only
    (the launcher's own check), and the workers get it as they would in a pod. Remembers the spec and what
    was on S3 under the step's work folder when the workers finished (the step removes it afterwards)."""

    s3: Any
    work_uri: str
    logs: Path
    specs: list[WorkerSpec] = field(default_factory=list)
    landed: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def run(self, spec: WorkerSpec, num_workers: int, timeout_seconds: float,
            max_restarts: int = 0) -> Recovery:
        require_object_storage(self.work_uri, spec)
        self.specs.append(spec)
        recovery = run_workers(spec, num_workers, timeout_seconds, self.logs, max_restarts)
        self.landed = s3_keys(self.s3, self.work_uri)
        for name in (METRICS_FILE, "fine_tunes.json"):
            if name in self.landed:
                self.files[name] = storage.read_text(storage.join(self.work_uri, name))
        return recovery


@pytest.fixture
def pods_here(s3, monkeypatch, tmp_path) -> dict[str, PodsHere]:
    """The train and optimize steps get `PodsHere` instead of the Kubernetes launcher; by step."""
    launched: dict[str, PodsHere] = {}

    def launcher_for(train, ctx):
        assert train.launcher == "kubernetes"
        launched[ctx.step] = PodsHere(s3, ctx.work_uri(), tmp_path / "worker-logs" / ctx.step)
        return launched[ctx.step]

    monkeypatch.setattr("tasks.steps.train.launcher_for", launcher_for)
    monkeypatch.setattr("tasks.steps.optimize.launcher_for", launcher_for)
    return launched


def assert_all_remote(spec: WorkerSpec) -> None:
    for name, path in spec.paths():
        assert is_remote(path), f"{name}: {path}"


def test_train_and_optimize_workers_write_through_s3_and_the_steps_read_it_back(
        s3, s3_inputs, pods_here, tiny_digits_csv, tmp_path, mlflow_store) -> None:
    run, root = s3_run(s3, tmp_path, tiny_digits_csv, mlflow_store, train={"epochs": 2},
                       optimize={"variants": ["pruned"], "fine_tune_epochs": 1, "latency_runs": 20,
                                 "representative_examples": 50})
    started = time.monotonic()
    model_uri = run_step("train", run, inputs=s3_inputs)["model"]
    train_seconds = time.monotonic() - started

    pods = pods_here["train"]
    [spec] = pods.specs
    assert_all_remote(spec)
    work = pods.work_uri
    assert work.startswith(root) and spec.saved_model_dir == f"{work}/{SAVED_MODEL_DIR}"
    assert {"saved_model/saved_model.pb", METRICS_FILE, "backup/chief/checkpoint"} <= set(pods.landed)
    assert not any(key.startswith("scratch/") for key in pods.landed), "scratch stays on the workers' disks"
    assert s3_keys(s3, work) == [], "the step removes its work folder once the Model is published"

    model = Model.read(model_uri)
    assert model_uri.startswith("s3://") and "saved_model/saved_model.pb" in s3_keys(s3, model_uri)
    assert storage.read_text(model.path(METRICS_FILE)) == pods.files[METRICS_FILE], "read back from S3"
    assert [r["epoch"] for r in read_metrics(model.path(METRICS_FILE))] == [1, 2]
    assert model.properties.final_metrics["accuracy"] > 0.2 and model.properties.restarts == 0
    assert (model.local(SAVED_MODEL_DIR) / "variables").is_dir()

    started = time.monotonic()
    optimized = OptimizedModel.read(run_step("optimize", run, inputs={"model": model_uri,
                                                                     "examples": s3_inputs["examples"]})["optimized"])
    optimize_seconds = time.monotonic() - started
    opt = pods_here["optimize"]
    [spec] = opt.specs
    assert_all_remote(spec)
    assert spec.initial_weights == model.path(SAVED_MODEL_DIR, "variables", "variables")
    assert {"pruned/saved_model.pb", "fine_tunes.json"} <= set(opt.landed)
    assert set(json.loads(opt.files["fine_tunes.json"])) == {"pruned"}
    [pruned] = optimized.properties.variants
    assert pruned.name == "pruned" and pruned.skipped_reason is None and pruned.sparsity > 0.5
    assert s3_keys(s3, opt.work_uri) == []
    print(f"train (2 workers, 2 epochs) through S3: {train_seconds:.1f}s; optimize (pruned): {optimize_seconds:.1f}s")


@pytest.mark.slow
def test_a_worker_killed_after_an_epoch_resumes_from_the_backup_on_s3(
        s3, s3_inputs, pods_here, tiny_digits_csv, tmp_path, mlflow_store) -> None:
    run, _ = s3_run(s3, tmp_path, tiny_digits_csv, mlflow_store, train={"epochs": 5, "batch_size": 8})
    logs = tmp_path / "worker-logs" / "train"
    killed: dict[str, Any] = {}

    def kill_after_a_backed_up_epoch() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            work = pods_here.get("train")
            if work and "backup/chief/checkpoint" in s3_keys(s3, work.work_uri):
                killed["after_epoch"] = len(read_metrics(f"{work.work_uri}/{METRICS_FILE}"))
                os.kill(json.loads((logs / WORKERS_FILE).read_text())["pids"][1], signal.SIGKILL)
                killed["at"] = time.monotonic()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_a_backed_up_epoch, daemon=True)
    killer.start()
    model = Model.read(run_step("train", run, inputs=s3_inputs)["model"])
    took = time.monotonic() - killed["at"]
    killer.join(5)

    props = model.properties
    assert props.restarts == 1
    assert props.resumed_from_epoch >= killed["after_epoch"] >= 1
    assert [r["epoch"] for r in read_metrics(model.path(METRICS_FILE))] == [1, 2, 3, 4, 5]
    # The restarted processes have new local folders: only the backup on S3 can have brought them past epoch 1.
    chief = (logs / "worker-0.attempt2.log").read_text()
    assert "restoring the backup from s3://" in chief
    first = next(line for line in chief.splitlines() if "worker 0 epoch " in line)
    assert int(first.split("worker 0 epoch ", 1)[1].split("/")[0]) >= 2, first
    print(f"killed after epoch {killed['after_epoch']}; resumed from epoch {props.resumed_from_epoch}; "
          f"kill to the end of training {took:.1f}s")


def test_the_kubernetes_launcher_accepts_a_real_train_steps_spec_on_s3(
        s3, s3_inputs, monkeypatch, tiny_digits_csv, tmp_path, mlflow_store) -> None:
    fake = FakeKubernetes().start()
    real = launch.KubernetesLauncher

    def launcher(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), api_client=fake.client(), poll_seconds=0.02)

    monkeypatch.setattr(launch, "KubernetesLauncher", launcher)
    run, root = s3_run(s3, tmp_path, tiny_digits_csv, mlflow_store)
    try:
        with pytest.raises(TrainError) as err:  # the fake's pods run nothing, so no SavedModel comes back
            run_step("train", run, inputs=s3_inputs)
    finally:
        fake.stop()
    [created] = fake.created
    assert created["kind"] == "TFJob" and fake.deleted[0][0] == "TFJob"
    spec_uri = created["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"][-1]
    work = f"{root}/digits/manual__{tmp_path.name}/train/.work"
    assert spec_uri == f"{work}/{created['metadata']['name']}.spec.json"
    spec = read_spec(spec_uri)
    assert_all_remote(spec)
    assert spec.saved_model_dir == f"{work}/saved_model" and spec.backup_dir == f"{work}/backup"
    assert str(err.value).splitlines()[0] == f"the train workers finished but left no SavedModel at {work}/saved_model"
