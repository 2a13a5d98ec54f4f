"""Register: one MLflow version per DAG run (a retry reuses it), never for an unblessed model; MLflow
runs: one parent per DAG run and pipeline, one child per tracked step."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import yaml

from tasks import tracking
from tasks.artifacts.registered import RegisteredModel
from tasks.snapshot import resolve_run
from tasks.step_runner import StepRejected, run_step, run_steps
from tests.tasks.conftest import resolve


@pytest.fixture
def gated(trained_digits, tmp_path, mlflow_store):
    """A fresh model name, plus a blessed evaluation and an optimized model of the shared tiny model."""
    config = tmp_path / "digits.yaml"
    config.write_text(trained_digits["config"].read_text() + f"registry: {{model_name: digits-{uuid.uuid4().hex[:8]}}}\n")
    run = resolve(config, tmp_path, mlflow_store, params={"thresholds": {"accuracy": 0.0}})
    outputs = run_steps(run, ["evaluate", "optimize"], available=trained_digits)
    return run, {name: outputs[name] for name in ("model", "evaluation", "optimized")}


def test_registers_version_1_as_challenger_and_reuses_it_on_retry(gated, mlflow_store) -> None:
    import mlflow

    run, inputs = gated
    first = RegisteredModel.read(run_step("register", run, inputs=inputs)["registered"]).properties
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_store)
    name = first.model_name
    assert first.version == 1 and first.model_uri == f"models:/{name}/1"
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"challenger": "1"}
    version = client.get_model_version(name, "1")
    assert float(version.tags["accuracy"]) > 0 and version.tags["kiln.data_fingerprint"]

    second = RegisteredModel.read(run_step("register", run, try_number=2, inputs=inputs)["registered"]).properties
    assert second.version == 1
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    mlflow.set_tracking_uri(mlflow_store)
    loaded = mlflow.tensorflow.load_model(f"models:/{name}@challenger")
    assert loaded.predict({"pixels": np.zeros((2, 64), np.float32)}, verbose=0).shape == (2, 10)
    served = mlflow.artifacts.list_artifacts(first.serving_artifact_uri)
    assert "tf_serving/saved_model.pb" in {a.path for a in served}


def test_unblessed_evaluation_is_not_registered(gated, trained_digits, tmp_path, mlflow_store) -> None:
    run, inputs = gated
    with pytest.raises(StepRejected, match="is not blessed"):  # republishes the evaluation, now unblessed
        strict = resolve(tmp_path / "digits.yaml", tmp_path, mlflow_store, params={"thresholds": {"accuracy": 1.0}})
        run_step("evaluate", strict, inputs={"model": inputs["model"], "examples": trained_digits["examples"]})
    with pytest.raises(StepRejected, match="RegisterError: refusing to register .* is not blessed"):
        run_step("register", run, inputs=inputs)
    from mlflow import MlflowClient

    name = yaml.safe_load((tmp_path / "digits.yaml").read_text())["registry"]["model_name"]
    assert MlflowClient(mlflow_store).search_model_versions(f"name = '{name}'") == []


def test_one_parent_run_per_dag_run_and_pipeline_with_one_child_per_step(trained_digits, tmp_path,
                                                                         mlflow_store) -> None:
    from tasks.artifacts.run import RunSnapshot

    run = RunSnapshot.read(resolve(trained_digits["config"], tmp_path, mlflow_store))
    config, ctx = run.config(), run.context()
    with tracking.step_run(config, ctx, "evaluate") as first:
        pass
    with tracking.step_run(config, ctx, "evaluate") as again:
        pass
    other_pipeline = config.model_copy(update={"pipeline": "other"})
    with tracking.step_run(other_pipeline, ctx, "evaluate") as other:
        pass
    assert first.info.run_id == again.info.run_id != other.info.run_id
    parent = tracking.parent_run(config, ctx)
    assert tracking.client(ctx).get_run(first.info.run_id).data.tags["mlflow.parentRunId"] == parent


def test_tracking_needs_a_uri_in_the_run_snapshot(trained_digits, tmp_path) -> None:
    from tasks.context import NotConfiguredError
    from tasks.snapshot import Deployment

    run = resolve_run(str(trained_digits["config"]), {}, Deployment(artifact_root=str(tmp_path)), "no-tracking")
    with pytest.raises(NotConfiguredError, match="no MLflow tracking URI"):
        run_step("evaluate", run, inputs={"model": trained_digits["model"], "examples": trained_digits["examples"]})
