"""Tuning: tune instances in separate processes share one Optuna study (SQLite beside the artifacts), every trial
is an MLflow run, train takes the best trial's values, a rerun reuses the finished trials, and a killed instance
loses only its running trial."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tasks.artifacts.model import Model
from tasks.step_runner import run_step, run_steps
from tests.subprocesses import call_at_once, start
from tests.tasks.conftest import resolve, write_pipeline

SPACE = {"train.learning_rate": {"type": "float", "low": 0.001, "high": 0.02, "log": True},
         "train.hparams.dropout": {"type": "choice", "values": [0.0, 0.2]},
         "train.hparams.hidden_units": {"type": "choice", "values": [[16], [32, 16]]}}


def tuned_pipeline(folder: Path, csv: Path, trials: int = 6, parallelism: int = 2) -> Path:
    return write_pipeline(folder, "tuned", csv, {"type": "classification"}, train={"epochs": 2},
                          tune={"objective": "accuracy", "trials": trials, "parallelism": parallelism, "space": SPACE})


def _tune(run_uri: str, inputs: dict[str, str], instance: int) -> int:
    return run_step("tune", run_uri, inputs=inputs, instance=instance)["trials_run"]


def data_steps(config: Path, root: Path, store: str, run_id: str) -> tuple[str, dict[str, Any]]:
    run = resolve(config, root, store, run_id=run_id)
    return run, run_steps(run, ["ingest", "validate", "transform"])


def trial_runs(store: str, run_id: str) -> list[Any]:
    client = MlflowClient(store)
    return client.search_runs([client.get_experiment_by_name("kiln").experiment_id],
                              f"tags.`kiln.role` = 'trial' and tags.`kiln.run_id` = '{run_id}'")


@pytest.mark.slow
def test_two_tune_processes_share_one_study_and_train_takes_the_best(tiny_digits_csv, tmp_path):
    mlflow_store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # its own: the processes share nothing with the suite's
    config = tuned_pipeline(tmp_path, tiny_digits_csv)
    run, outputs = data_steps(config, tmp_path, mlflow_store, "tuned")
    inputs = {name: outputs[name] for name in ("examples", "transform")}
    ran = call_at_once("tests.tasks.test_tune:_tune", [[run, inputs, 0], [run, inputs, 1]])
    assert sum(ran) == 6 and all(ran), f"both instances drew trials from the one study: {ran}"
    trials = trial_runs(mlflow_store, "tuned")
    assert len(trials) == 6 and {t.data.tags["kiln.trial"] for t in trials} == {str(n) for n in range(6)}
    assert all(set(SPACE) <= set(t.data.params) and t.data.metrics.get("accuracy") is not None for t in trials)

    model = Model.read(run_step("train", run, inputs=inputs)["model"]).properties
    tuning = model.tuning
    assert (tuning["trials"], tuning["completed"] + tuning["pruned"], tuning["parallelism"]) == (6, 6, 2)
    best = tuning["best"]["params"]
    assert set(best) == set(SPACE) and 0 <= tuning["best"]["metric"]["accuracy"] <= 1
    assert model.learning_rate == best["train.learning_rate"]
    assert model.hparams["dropout"] == best["train.hparams.dropout"]
    assert model.hparams["hidden_units"] == best["train.hparams.hidden_units"]
    completed = [t for t in trials if t.data.tags["kiln.trial_state"] == "complete"]
    assert tuning["best"]["metric"]["accuracy"] == max(t.data.metrics["accuracy"] for t in completed)

    rerun, _ = data_steps(config, tmp_path, mlflow_store, "rerun")
    assert _tune(rerun, inputs, 0) == 0, "the same space and data: the study's trials are reused"


@pytest.mark.slow
def test_a_killed_tune_instance_loses_only_its_running_trial(tiny_digits_csv, tmp_path):
    import optuna

    from tasks import tuning
    from tasks.artifacts.examples import Examples
    from tasks.artifacts.run import RunSnapshot
    from tasks.artifacts.transform import TransformGraph
    from tasks.snapshot import run_config, run_context

    mlflow_store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tuned_pipeline(tmp_path, tiny_digits_csv, trials=3, parallelism=1)
    run, outputs = data_steps(config, tmp_path, mlflow_store, "killed")
    inputs = {name: outputs[name] for name in ("examples", "transform")}
    snapshot = RunSnapshot.read(run)
    resolved = run_config(snapshot)
    ctx = run_context(snapshot, step="tune")
    study = tuning.open_study(tuning.storage_url(ctx, resolved.tune), tuning.study_name(
        ctx, resolved.tune, resolved.train, Examples.read(inputs["examples"]), TransformGraph.read(inputs["transform"])),
        resolved.tune, "classification")

    process = start("tests.tasks.test_tune:_tune", run, inputs, 0)
    deadline = time.monotonic() + 120
    while not study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        assert time.monotonic() < deadline and process.poll() is None, "no trial started"
        time.sleep(0.2)
    process.kill()  # SIGKILL mid-trial, as a lost worker would be
    process.communicate(timeout=60)

    ran = _tune(run, inputs, 0)  # Airflow's retry of the instance
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.FAIL) == 1, "the killed trial, failed once its heartbeat stopped"
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 3
    assert ran == 3
