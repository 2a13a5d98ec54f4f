"""Training faults, injected into real worker processes: a worker killed mid-training (the group restarts
and resumes from its backup), a worker that keeps dying (a one-line error once the restarts are spent, and
no process left), and the launcher itself killed (its workers go with it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tasks.artifacts.examples import Examples
from tasks.artifacts.model import METRICS_FILE, Model
from tasks.artifacts.transform import TransformGraph
from tasks.config import TrainConfig
from tasks.step_runner import run_step, run_steps
from tasks.training.launcher import WORKERS_FILE, TrainError, read_metrics, run_workers
from tasks.training.spec import TrainSpec
from tests.servers import wait_for as wait_until
from tests.tasks.conftest import REPO, digits_pipeline, resolve, step_folder

# Small batches make an epoch ~0.5 s on two CPU workers: long enough to kill a worker in the middle.
SLOW_EPOCHS = {"batch_size": 8, "num_workers": 2}

SELF_KILLING_BODY = '''
import os
import signal

def build(inputs, hparams):
    os.kill(os.getpid(), signal.SIGKILL)  # a worker that dies the same way on every start
'''


@pytest.fixture(scope="module")
def digits_inputs(tiny_digits_csv: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Examples and transform of the tiny digits set (no training: each test trains its own way)."""
    root = tmp_path_factory.mktemp("fault-inputs")
    run = resolve(digits_pipeline(root, tiny_digits_csv), root, mlflow_store)
    out = run_steps(run, ["ingest", "validate", "transform"])
    return {"examples": out["examples"], "transform": out["transform"]}


def _spec(inputs: dict[str, str], work: Path, model: str = "cnn", **train: Any) -> TrainSpec:
    """A train-mode worker spec, as the train step builds it."""
    data = Examples.read(inputs["examples"])
    config = TrainConfig(model=model, hparams={"image_shape": [8, 8, 1]}, **train)
    return TrainSpec(train_files=data.split_files("train"), eval_files=data.split_files("eval"),
                     num_train=data.properties.row_counts["train"], num_eval=data.properties.row_counts["eval"],
                     preprocessing=TransformGraph.read(inputs["transform"]).preprocessing(),
                     model=model, hparams=config.hparams, train=config,
                     saved_model_dir=str(work / "saved_model"), metrics_path=str(work / METRICS_FILE),
                     backup_dir=str(work / "backup"), scratch_dir=str(work / "scratch"))


def _wait_for(condition, timeout: float, what: str):
    return wait_until(condition, timeout, interval=0.1, message=what)


def _epochs(work: Path) -> int:
    try:
        return len(read_metrics(work / METRICS_FILE))
    except json.JSONDecodeError:  # caught between a line's bytes
        return 0


def _worker_pids(work: Path) -> list[int]:
    try:
        return json.loads((work / WORKERS_FILE).read_text())["pids"]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _workers_of(spec_dir: Path) -> list[psutil.Process]:
    """Training workers of this test only (other tests may train beside it)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "tasks.training.worker" in cmdline and str(spec_dir) in cmdline:
            found.append(proc)
    return found


class WorkerKiller(threading.Thread):
    """Kills one worker with SIGKILL once the chief has finished an epoch, then times the recovery:
    from the kill to the first epoch the restarted group finishes."""

    def __init__(self, work: Path, worker: int):
        super().__init__(daemon=True)
        self.work, self.worker = work, worker
        self.killed_after_epoch = 0
        self.recovery_seconds: float | None = None

    def run(self) -> None:
        self.killed_after_epoch = _wait_for(lambda: _epochs(self.work), 120, "the first epoch")
        os.kill(_worker_pids(self.work)[self.worker], signal.SIGKILL)
        killed_at = time.monotonic()
        _wait_for(lambda: _epochs(self.work) > self.killed_after_epoch, 120, "an epoch after the restart")
        self.recovery_seconds = time.monotonic() - killed_at


@pytest.mark.slow
def test_a_worker_killed_mid_training_restarts_the_group_and_training_resumes(
        tiny_digits_csv, digits_inputs, tmp_path, mlflow_store) -> None:
    from mlflow import MlflowClient

    run = resolve(digits_pipeline(tmp_path, tiny_digits_csv, train={"epochs": 6, **SLOW_EPOCHS}), tmp_path,
                  mlflow_store)
    killer = WorkerKiller(step_folder(tmp_path, "digits", "train") / ".work", worker=1)
    killer.start()
    model = Model.read(run_step("train", run, inputs=digits_inputs)["model"])
    killer.join(5)
    props = model.properties
    assert props.restarts == 1
    assert props.resumed_from_epoch >= killer.killed_after_epoch >= 1
    history = [json.loads(line) for line in Path(model.path(METRICS_FILE)).read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert Path(model.saved_model, "saved_model.pb").exists()
    metrics = MlflowClient(mlflow_store).get_run(props.mlflow_run_id).data.metrics
    assert metrics["train_restarts"] == 1 and metrics["train_resumed_from_epoch"] == props.resumed_from_epoch
    print(f"kill after epoch {killer.killed_after_epoch} -> first resumed epoch done in "
          f"{killer.recovery_seconds:.1f}s")


@pytest.mark.parametrize("max_restarts", [0, 2])
def test_a_worker_that_keeps_dying_fails_once_the_restarts_are_spent(digits_inputs, tmp_path, max_restarts) -> None:
    body = tmp_path / "dies.py"
    body.write_text(SELF_KILLING_BODY)
    spec = _spec(digits_inputs, tmp_path, model=f"{body}:build", epochs=1)
    with pytest.raises(TrainError) as caught:
        run_workers(spec, num_workers=1, timeout_seconds=120, work_dir=tmp_path, max_restarts=max_restarts)
    head = str(caught.value).splitlines()[0]
    tried = f" after {max_restarts} restart(s) (train.max_restarts={max_restarts})" if max_restarts else ""
    assert head == f"train worker 0 of 1 was killed by SIGKILL{tried}"
    attempts = sorted(p.name for p in tmp_path.glob("worker-0.attempt*.log"))
    assert attempts == [f"worker-0.attempt{k}.log" for k in range(1, max_restarts + 2)]
    assert not _workers_of(tmp_path)


LAUNCHER = """
import sys
from pathlib import Path
from tasks.training.launcher import run_workers
from tasks.training.spec import TrainSpec
run_workers(TrainSpec.model_validate_json(sys.argv[1]), num_workers=2, timeout_seconds=300, work_dir=Path(sys.argv[2]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_workers_die_with_the_process_that_launched_them(digits_inputs, tmp_path, sig) -> None:
    spec = _spec(digits_inputs, tmp_path, epochs=100, **SLOW_EPOCHS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LAUNCHER), spec.model_dump_json(), str(tmp_path)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _epochs(tmp_path), 120, "the first epoch")  # both workers are deep in TensorFlow
        workers = [psutil.Process(pid) for pid in _worker_pids(tmp_path)]
        assert len(workers) == 2 and all(w.is_running() for w in workers)
        launcher.send_signal(sig)
        signalled = time.monotonic()
        _, alive = psutil.wait_procs(workers, timeout=8)
        assert not alive, f"workers {[w.pid for w in alive]} outlived their launcher ({sig.name})"
        print(f"{sig.name} to the launcher -> workers gone in {time.monotonic() - signalled:.2f}s")
        assert launcher.wait(10) == -sig, "after cleanup, SIGTERM still ends the launcher as it would have"
    finally:
        launcher.kill()
        for worker in _workers_of(tmp_path):
            worker.kill()
