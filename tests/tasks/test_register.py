"""Register: one MLflow version per DAG run (a retry reuses it), blessed or not, with its whole story;
MLflow runs: one parent per DAG run and pipeline, one child per tracked step; the alias history."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import numpy as np
import pytest
from mlflow import MlflowClient

from tasks import tracking
from tasks.artifacts.optimized import OptimizedModel
from tasks.artifacts.registered import RegisteredModel
from tasks.model_registry import (
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    PREVIOUS,
    aliases,
    history,
    move_alias,
    promote,
)
from tasks.registry import step
from tasks.snapshot import resolve_run, run_context
from tasks.step_runner import run_step, run_steps
from tests.tasks.conftest import evaluate_inputs, resolve

INPUTS = tuple(step("register").inputs)


def _registered(trained, tmp_path, mlflow_store, thresholds):
    """A fresh model name; evaluate (with `thresholds`), optimize and register the shared tiny model."""
    name = f"digits-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "digits.yaml"
    config.write_text(trained["config"].read_text() + f"registry: {{model_name: {name}}}\n"
                      f"description: Digits for the register tests.\n")
    run = resolve(config, tmp_path, mlflow_store, params={"thresholds": thresholds})
    outputs = run_steps(run, ["optimize", "evaluate", "register"], available=trained)
    return name, run, outputs


def test_a_blessed_version_carries_its_story_and_a_retry_reuses_it(trained_digits, tmp_path,
                                                                              mlflow_store) -> None:
    import mlflow

    name, run, outputs = _registered(trained_digits, tmp_path, mlflow_store, {"accuracy": 0.0})
    first = RegisteredModel.read(outputs["registered"]).properties
    client = MlflowClient(mlflow_store)
    assert first.version == 1 and first.blessed
    assert aliases(client, name) == {}, "challenger is set by push, once the version is also infra-blessed"
    version = client.get_model_version(name, "1")
    tags = version.tags
    assert tags["blessed"] == "true" and float(tags["accuracy"]) > 0 and tags["kiln.data_fingerprint"]
    assert tags["kiln.dag_id"] == "kiln_digits" and tags["kiln.schema"] == "schema/schema.pbtxt"
    assert tags["kiln.config_sha256"] and tags["kiln.run_snapshot"].endswith("/resolve/run")
    assert version.description.startswith("Blessed. Eval accuracy")
    assert client.get_registered_model(name).description == "Digits for the register tests."
    files = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"model_card.md", "compression", "tf_serving", "tflite", "contract", "schema", "evaluation",
            "training"} <= files
    logged = mlflow.models.get_model_info(f"models:/{name}/1")
    assert logged.saved_input_example_info["artifact_path"] == "input_example.json"
    assert [i["name"] for i in logged.signature.inputs.to_dict()] == ["pixels"]
    card = mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_card.md")
    assert card.startswith(f"# {name} v1") and "Digits for the register tests." in card and "**Blessed: yes.**" in card

    # tf_serving/ is optimize's version folder, the one evaluate blessed: one model file, its format tagged.
    served_files = {a.path for a in client.list_artifacts(version.run_id, "tf_serving")}
    shipped = OptimizedModel.read(outputs["optimized"]).properties.shipped
    model_file = {"tflite": "tf_serving/model.tflite", "saved_model": "tf_serving/saved_model.pb"}[shipped.format]
    assert model_file in served_files and "tf_serving/assets.extra" in served_files
    other = {"tf_serving/model.tflite", "tf_serving/saved_model.pb"} - {model_file}
    assert not other & served_files, "never both: the server's format follows the folder"
    assert tags["kiln.artifact_sha256"] == shipped.sha256 == first.artifact_sha256
    assert tags["kiln.served_format"] == shipped.format

    retried = RegisteredModel.read(run_step("register", run, try_number=2,
                                            inputs={k: outputs[k] for k in INPUTS})["registered"])
    second = retried.properties
    assert second.version == 1
    assert retried.fingerprint == RegisteredModel.read(outputs["registered"]).fingerprint, \
        "a retry rebuilds the same version folder, byte for byte"
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    mlflow.set_tracking_uri(mlflow_store)
    loaded = mlflow.tensorflow.load_model(f"models:/{name}/1")
    assert loaded.predict({"pixels": np.zeros((2, 64), np.float32)}, verbose=0).shape == (2, 10)


def test_an_unblessed_version_is_registered_tagged_and_without_an_alias(trained_digits, tmp_path,
                                                                       mlflow_store) -> None:
    name, _, outputs = _registered(trained_digits, tmp_path, mlflow_store, {"accuracy": 1.0})
    registered = RegisteredModel.read(outputs["registered"]).properties
    client = MlflowClient(mlflow_store)
    assert registered.blessed is False and aliases(client, name) == {}
    tags = client.get_model_version(name, str(registered.version)).tags
    assert tags["blessed"] == "false"
    assert "does not meet evaluate.thresholds.accuracy (>= 1)" in tags["kiln.failed_check"]
    assert client.get_model_version(name, str(registered.version)).description.startswith("Not blessed: eval accuracy")


def test_alias_moves_are_audited_and_promotion_keeps_the_rollback_target(mlflow_store) -> None:
    client = MlflowClient(mlflow_store)
    name = f"audit-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source="file:///nowhere")
    move_alias(client, name, CHALLENGER, 1, "blessed", by="run a")
    assert promote(client, name, 1, "verified", by="run a") == {CHAMPION: 1}
    assert promote(client, name, 2, "verified", by="run b") == {CHAMPION: 2, PREVIOUS: 1}
    assert move_alias(client, name, CHAMPION, 2, "again", by="x") is None, "no move, no entry"
    entries = history(client, name)
    assert [(e["alias"], e["from_version"], e["to_version"]) for e in entries] == [
        (CHALLENGER, None, 1), (CHAMPION, None, 1), (CHALLENGER, 1, None), (PREVIOUS, None, 1), (CHAMPION, 1, 2)]
    assert entries[-1]["why"] == "verified" and entries[-1]["by"] == "run b" and entries[-1]["when"]
    assert json.loads(client.get_registered_model(name).tags[HISTORY_TAG]) == entries


def test_one_parent_run_per_dag_run_and_pipeline_with_one_child_per_step(trained_digits, tmp_path,
                                                                         mlflow_store) -> None:
    from tasks.artifacts.run import RunSnapshot

    run = RunSnapshot.read(resolve(trained_digits["config"], tmp_path, mlflow_store))
    ctx = run_context(run, step="evaluate")
    with tracking.step_run(ctx) as first:
        pass
    with tracking.step_run(ctx) as again:
        pass
    with tracking.step_run(replace(ctx, pipeline="other")) as other:
        pass
    assert first.info.run_id == again.info.run_id != other.info.run_id
    parent = tracking.parent_run(ctx)
    assert tracking.client(ctx).get_run(first.info.run_id).data.tags["mlflow.parentRunId"] == parent


def test_tracking_needs_a_uri_in_the_run_snapshot(trained_digits, tmp_path) -> None:
    from tasks.context import NotConfiguredError
    from tasks.snapshot import Deployment

    run = resolve_run(str(trained_digits["config"]), {}, Deployment(artifact_root=str(tmp_path)), "no-tracking")
    with pytest.raises(NotConfiguredError, match="no MLflow tracking URI"):
        run_step("evaluate", run, inputs=evaluate_inputs(trained_digits))
