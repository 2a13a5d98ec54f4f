from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import train
from tasks.artifacts import read_artifact
from tasks.model import load_serving_function

pytestmark = pytest.mark.usefixtures("mlflow_env")


def test_one_worker_exports_the_serving_contract(trained) -> None:
    import tensorflow as tf

    artifact = read_artifact(trained["model"], "Model")
    serve = load_serving_function(artifact.path("saved_model"))
    _, inputs = serve.structured_input_signature
    assert inputs == {"pixels": tf.TensorSpec([None, 64], tf.float32, name="pixels")}
    outputs = serve.structured_outputs
    assert set(outputs) == {"probabilities", "digit"}
    assert (outputs["probabilities"].dtype, outputs["probabilities"].shape.as_list()) == (tf.float32, [None, 10])
    assert (outputs["digit"].dtype, outputs["digit"].shape.as_list()) == (tf.int64, [None])

    history = [json.loads(line) for line in Path(artifact.path("metrics.jsonl")).read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"} <= set(history[-1])
    assert artifact.properties["num_workers"] == 1
    assert artifact.properties["final_metrics"]["val_accuracy"] == history[-1]["val_accuracy"]
    assert artifact.properties["train_seconds"] > 0


def test_train_logs_params_and_epoch_metrics_to_mlflow(trained) -> None:
    from mlflow import MlflowClient

    run_id = read_artifact(trained["model"], "Model").properties["mlflow_run_id"]
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.data.params["train.epochs"] == "3"
    assert run.data.tags["kiln.step"] == "train"
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2, 3]


@pytest.mark.slow
def test_two_workers_train_together_on_loopback(tiny_digits_csv, trained, make_config, ctx) -> None:
    config = make_config(tiny_digits_csv, train={"epochs": 1, "num_workers": 2})
    uri = train.run(config, ctx, examples=trained["examples"], transform=trained["transform"])["model"]
    artifact = read_artifact(uri, "Model")
    assert artifact.properties["num_workers"] == 2
    assert Path(artifact.path("saved_model", "saved_model.pb")).exists()
    assert len(Path(artifact.path("metrics.jsonl")).read_text().splitlines()) == 1  # only the chief writes
    assert not Path(ctx.output_uri("train", ".work")).exists()


def test_failing_worker_surfaces_a_one_line_headed_error(tmp_path) -> None:
    with pytest.raises(train.TrainError) as caught:
        train.run_workers({"train_files": []}, num_workers=1, timeout_seconds=60, work_dir=tmp_path)
    head = str(caught.value).splitlines()[0]
    assert head.startswith("train worker 0 of 1 failed with exit code 2: train_worker: worker spec ")
    assert "lacks eval_files, feature_columns" in head


def test_workers_past_the_deadline_are_stopped(trained, tmp_path) -> None:
    spec = {"train_files": [], "eval_files": [], "feature_columns": [], "label_column": "label", "num_train": 1,
            "num_eval": 1, "train": {}, "mean": [], "variance": [], "saved_model_dir": str(tmp_path / "sm"),
            "metrics_path": str(tmp_path / "m.jsonl"), "backup_dir": str(tmp_path / "b"), "scratch_dir": str(tmp_path / "s")}
    # Two workers, but only a 1 s deadline: importing TensorFlow alone takes longer.
    with pytest.raises(train.TrainError, match=r"^train workers \[0, 1\] still running after the 1s deadline"):
        train.run_workers(spec, num_workers=2, timeout_seconds=1, work_dir=tmp_path)


def test_resumed_epochs_are_counted_once(tmp_path) -> None:
    # A worker killed after writing epoch 2's line but before its backup repeats epoch 2 on retry.
    lines = [{"epoch": 1, "loss": 0.9}, {"epoch": 2, "loss": 0.5}, {"epoch": 2, "loss": 0.4}, {"epoch": 3, "loss": 0.3}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert train.read_metrics(path) == [lines[0], lines[2], lines[3]]
