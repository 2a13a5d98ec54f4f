from __future__ import annotations

import uuid

import numpy as np
import pytest

from tasks import evaluate, optimize, register, tracking
from tasks.artifacts import read_artifact

pytestmark = pytest.mark.usefixtures("mlflow_env")


@pytest.fixture
def gated(trained, make_config, tiny_digits_csv, ctx):
    """A fresh model name, plus a blessed evaluation and an optimized model of the shared tiny model."""
    config = make_config(tiny_digits_csv, evaluate={"min_accuracy": 0.0},
                         registry={"model_name": f"digits-{uuid.uuid4().hex[:8]}"})
    evaluation = evaluate.run(config, ctx, model=trained["model"], examples=trained["examples"])["evaluation"]
    optimized = optimize.run(config, ctx, model=trained["model"], examples=trained["examples"])["optimized"]
    return config, {"model": trained["model"], "evaluation": evaluation, "optimized": optimized}


def test_registers_version_1_as_challenger_and_reuses_it_on_retry(gated, ctx) -> None:
    import mlflow

    config, inputs = gated
    first = read_artifact(register.run(config, ctx, **inputs)["registered"], "RegisteredModel").properties
    client = tracking.client()
    name = config.registry.model_name
    assert first["version"] == 1 and first["model_uri"] == f"models:/{name}/1"
    assert {k: str(v) for k, v in client.get_registered_model(name).aliases.items()} == {"challenger": "1"}
    version = client.get_model_version(name, "1")
    assert version.tags["kiln.run_id"] == ctx.run_id and float(version.tags["accuracy"]) > 0
    assert version.tags["kiln.data_fingerprint"]

    retried = ctx.__class__(ctx.artifact_root, ctx.pipeline, ctx.run_id, try_number=2)
    second = read_artifact(register.run(config, retried, **inputs)["registered"], "RegisteredModel").properties
    assert second["version"] == 1
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    loaded = mlflow.tensorflow.load_model(f"models:/{name}@challenger")
    assert loaded.predict(np.zeros((2, 64), np.float32), verbose=0).shape == (2, 10)
    served = mlflow.artifacts.list_artifacts(first["serving_artifact_uri"])
    assert "tf_serving/saved_model.pb" in {a.path for a in served}


def test_unblessed_evaluation_is_not_registered(gated, trained, tiny_digits_csv, make_config, ctx) -> None:
    config, inputs = gated
    strict = make_config(tiny_digits_csv, evaluate={"min_accuracy": 1.0}, registry=config.registry.model_dump())
    with pytest.raises(evaluate.ModelNotBlessedError):  # republishes the evaluation, now unblessed
        evaluate.run(strict, ctx, model=trained["model"], examples=trained["examples"])
    with pytest.raises(register.RegisterError, match="is not blessed"):
        register.run(config, ctx, **inputs)
    assert tracking.client().search_model_versions(f"name = '{config.registry.model_name}'") == []


def test_tracking_needs_an_explicit_uri(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(tracking.TrackingError, match="MLFLOW_TRACKING_URI is not set"):
        tracking.client()


def test_one_parent_run_per_dag_run_with_one_child_per_step(mlflow_store, make_config, tiny_digits_csv, ctx) -> None:
    config = make_config(tiny_digits_csv)
    with tracking.step_run(config, ctx, "evaluate", data_fingerprint="abc") as first:
        pass
    with tracking.step_run(config, ctx, "evaluate") as again:
        pass
    with tracking.step_run(config, ctx.__class__(ctx.artifact_root, ctx.pipeline, "another-run"), "evaluate") as other:
        pass
    assert first.info.run_id == again.info.run_id != other.info.run_id
    parent = tracking.parent_run(config, ctx)
    client = tracking.client()
    assert client.get_run(first.info.run_id).data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(parent).data.tags["kiln.data_fingerprint"] == "abc"
