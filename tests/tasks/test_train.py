"""Train: the serving contract per task, user model bodies, multi-worker training, and the launcher's
failure modes (a failed worker, a deadline, a model that breaks the contract)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.artifacts.model import Model
from tasks.models.contract import ModelContractError
from tasks.models.export import load_serving_function
from tasks.step_runner import StepRejected, run_step, run_steps
from tasks.training.launcher import TrainError, read_metrics, run_workers
from tests.tasks.conftest import (
    UNTIL_TRAIN,
    churn_pipeline,
    digits_pipeline,
    resolve,
    step_folder,
    worker_spec,
)


def _signature(model_uri: str):
    serve = load_serving_function(Model.read(model_uri).saved_model)
    return serve, serve.structured_input_signature[1], serve.structured_outputs


def test_digits_exports_pixels_to_probabilities_and_the_digit(trained_digits) -> None:
    import tensorflow as tf

    _, inputs, outputs = _signature(trained_digits["model"])
    assert inputs == {"pixels": tf.TensorSpec([None, 64], tf.float32, name="pixels")}
    assert set(outputs) == {"probabilities", "class_id", "class"}
    assert (outputs["probabilities"].dtype, outputs["probabilities"].shape.as_list()) == (tf.float32, [None, 10])
    assert outputs["class"].dtype == tf.int64, "the label's own type: digits are integers"
    artifact = Model.read(trained_digits["model"])
    history = [json.loads(line) for line in Path(artifact.path("metrics.jsonl")).read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"} <= set(history[-1])
    assert artifact.properties.final_metrics["val_accuracy"] == history[-1]["val_accuracy"]
    assert artifact.properties.num_workers == 1 and artifact.properties.train_seconds > 0


def test_churn_serves_raw_features_by_name_and_answers_with_the_label_value(trained_churn) -> None:
    import tensorflow as tf

    serve, inputs, outputs = _signature(trained_churn["model"])
    assert {name: spec.dtype for name, spec in inputs.items()} == {
        "tenure": tf.float32, "plan": tf.string, "monthly": tf.float32, "paperless": tf.bool, "region": tf.string}
    assert all(spec.shape.as_list() == [None] for spec in inputs.values())
    answer = serve(tenure=tf.constant([3.0, 70.0]), plan=tf.constant(["basic", "never-seen"]),
                   monthly=tf.constant([float("nan"), 20.0]), paperless=tf.constant([True, False]),
                   region=tf.constant(["", "north"]))
    assert answer["class"].dtype == tf.string and set(answer["class"].numpy()) <= {b"yes", b"no"}
    probabilities = answer["probabilities"].numpy()
    assert probabilities.shape == (2, 2) and np.allclose(probabilities.sum(axis=1), 1) and np.isfinite(probabilities).all()


def test_regression_serves_one_prediction_per_example(trained_house) -> None:
    import tensorflow as tf

    _, _, outputs = _signature(trained_house["model"])
    assert set(outputs) == {"prediction"}
    assert (outputs["prediction"].dtype, outputs["prediction"].shape.as_list()) == (tf.float32, [None])


def test_train_logs_params_and_epoch_metrics_to_mlflow(trained_digits, mlflow_store) -> None:
    from mlflow import MlflowClient

    run_id = Model.read(trained_digits["model"]).properties.mlflow_run_id
    client = MlflowClient(mlflow_store)
    run = client.get_run(run_id)
    assert run.data.params["train.epochs"] == "3" and run.data.params["train.hparams.image_shape"] == "[8, 8, 1]"
    assert run.data.tags["kiln.step"] == "train"
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2, 3]
    assert "training_curves.png" in {a.path for a in client.list_artifacts(run_id)}


CUSTOM_BODY = '''
import tf_keras as keras

def build(inputs, hparams):
    return keras.layers.Dense(hparams["units"], activation="relu", name="my_dense")(inputs)

def flat(inputs, hparams):
    return keras.layers.Reshape((1, -1))(inputs)
'''


def test_a_custom_model_file_is_carried_by_the_run_and_built_into_the_model(churn_csv, tmp_path, mlflow_store) -> None:
    module = tmp_path / "models" / "churn_body.py"
    module.parent.mkdir()
    module.write_text(CUSTOM_BODY)
    config = churn_pipeline(tmp_path, churn_csv, train={"model": "models/churn_body.py:build", "hparams": {"units": 8},
                                                        "epochs": 1})
    out = run_steps(resolve(config, tmp_path, mlflow_store), UNTIL_TRAIN)
    module.unlink()  # the run snapshot holds its own copy
    assert Model.read(out["model"]).properties.model.endswith("resolve/run/user_model/churn_body.py:build")
    import tf_keras as keras

    layers = [layer.name for layer in keras.models.load_model(Model.read(out["model"]).saved_model).layers]
    assert "my_dense" in layers and "probabilities" in layers and "plan_lookup" in layers


def test_a_body_of_the_wrong_shape_is_refused_in_train_with_the_shapes_named(churn_csv, tmp_path, mlflow_store) -> None:
    module = tmp_path / "body.py"
    module.write_text(CUSTOM_BODY)
    config = churn_pipeline(tmp_path, churn_csv, train={"model": f"{module}:flat", "epochs": 1})
    with pytest.raises(StepRejected, match=r"ModelContractError: train.model '.*body.py:flat' returned a tensor of "
                                           r"shape \(batch, 1, \d+\); the task's head needs \(batch, units\)"):
        run_steps(resolve(config, tmp_path, mlflow_store), UNTIL_TRAIN)


@pytest.mark.slow
def test_two_workers_train_together_on_loopback(tiny_digits_csv, trained_digits, tmp_path, mlflow_store) -> None:
    config = digits_pipeline(tmp_path, tiny_digits_csv, train={"epochs": 1, "num_workers": 2})
    run = resolve(config, tmp_path, mlflow_store)
    uri = run_step("train", run, inputs={"examples": trained_digits["examples"],
                                         "transform": trained_digits["transform"]})["model"]
    artifact = Model.read(uri)
    assert artifact.properties.num_workers == 2
    assert Path(artifact.saved_model, "saved_model.pb").exists()
    assert len(Path(artifact.path("metrics.jsonl")).read_text().splitlines()) == 1  # only the chief writes
    assert not (step_folder(tmp_path, "digits", "train") / ".work").exists()


def test_failing_worker_surfaces_a_one_line_headed_error(tmp_path, monkeypatch) -> None:
    # A spec of another kiln (an older image on the pods, say) lacks a field this worker needs.
    def write_an_older_spec(spec, uri: str) -> None:
        Path(uri).write_text(json.dumps(spec.model_dump(mode="json", exclude={"eval_files"})))

    monkeypatch.setattr("tasks.training.launcher.write_spec", write_an_older_spec)
    with pytest.raises(TrainError) as caught:
        run_workers(worker_spec(tmp_path), num_workers=1, timeout_seconds=60, work_dir=tmp_path)
    head = str(caught.value).splitlines()[0]
    assert head == (f"train worker 0 of 1 failed with exit code 2: train_worker: worker spec {tmp_path}/spec.json: "
                    f"eval_files: Field required")


def test_a_contract_error_in_the_workers_is_not_retried(trained_churn, tmp_path) -> None:
    from tasks.artifacts.transform import TransformGraph

    spec = worker_spec(tmp_path, train_files=[], eval_files=[], num_train=1, num_eval=1, model="nowhere.py:build",
                       preprocessing=TransformGraph.read(trained_churn["transform"]).preprocessing())
    with pytest.raises(ModelContractError, match=r"^train.model 'nowhere.py:build': file not found: nowhere.py$"):
        run_workers(spec, num_workers=1, timeout_seconds=120, work_dir=tmp_path)


def test_workers_past_the_deadline_are_stopped(tmp_path) -> None:
    # Two workers, but only a 1 s deadline: joining the group and building the model alone take longer.
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "examples").mkdir()
    for split, rows in (("train", 100), ("eval", 20)):
        pq.write_table(pa.table({"x": [float(i) for i in range(rows)], "y": [2.0 * i for i in range(rows)]}),
                       tmp_path / "examples" / f"{split}-0.parquet")
    with pytest.raises(TrainError, match=r"^train workers \[0, 1\] still running after the 1s deadline"):
        run_workers(worker_spec(tmp_path), num_workers=2, timeout_seconds=1, work_dir=tmp_path)


def test_resumed_epochs_are_counted_once(tmp_path) -> None:
    # A worker killed after writing epoch 2's line but before its backup repeats epoch 2 on retry.
    lines = [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.5}, {"epoch": 2, "loss": 0.4}, {"epoch": 3, "loss": 0.3}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_metrics(path) == [lines[0], lines[2], lines[3]]
