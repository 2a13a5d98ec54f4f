"""Optimize: a TFLite file where the builtins cover the model, measured like the SavedModel; skipped with
the reason recorded where they do not (string lookups)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.artifacts.examples import Examples
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import OptimizedModel
from tasks.features import load_arrays
from tasks.models.export import predict
from tasks.step_runner import run_step, run_steps
from tasks.steps.optimize import run_tflite
from tests.tasks.conftest import UNTIL_TRAIN, house_pipeline, resolve


def _optimize(trained: dict, root: Path, tracking: str) -> OptimizedModel:
    run = resolve(trained["config"], root, tracking)
    uri = run_step("optimize", run, inputs={"model": trained["model"], "examples": trained["examples"]})["optimized"]
    return OptimizedModel.read(uri)


def test_dynamic_range_tflite_agrees_with_the_saved_model(trained_digits, tmp_path, mlflow_store) -> None:
    optimized = _optimize(trained_digits, tmp_path, mlflow_store)
    props = optimized.properties
    tflite = Path(optimized.tflite_path).read_bytes()
    assert props.tflite_bytes == len(tflite) < props.saved_model_bytes
    assert 0 < props.tflite_gzip_bytes <= len(tflite)
    assert props.metric == "accuracy" and abs(props.tflite_metric - props.saved_model_metric) <= 0.02

    model = Model.read(trained_digits["model"])
    inputs, _ = load_arrays(Examples.read(trained_digits["examples"]).split_files("eval"), model.preprocessing.features,
                            model.preprocessing.label)
    saved = predict(model.saved_model, inputs)["probabilities"].argmax(axis=1)
    lite = run_tflite(tflite, inputs)["probabilities"].argmax(axis=1)
    assert props.agreement_with_saved_model == np.mean(saved == lite) >= 0.95


def test_regression_tflite_reports_rmse(house_csv, tmp_path, mlflow_store) -> None:
    numeric = tmp_path / "numeric.csv"  # without the string column: the TFLite builtins cover the model
    numeric.write_text("".join(",".join(f for i, f in enumerate(line.split(",")) if i != 2) + "\n"
                               for line in house_csv.read_text().splitlines()))
    run = resolve(house_pipeline(tmp_path, numeric, train={"epochs": 5}), tmp_path, mlflow_store)
    props = OptimizedModel.read(run_steps(run, [*UNTIL_TRAIN, "optimize"])["optimized"]).properties
    assert props.metric == "rmse" and props.tflite_bytes and props.skipped_reason is None
    assert abs(props.tflite_metric - props.saved_model_metric) / props.saved_model_metric < 0.05
    assert props.agreement_with_saved_model >= 0.95


def test_string_lookups_skip_the_tflite_file_with_the_reason(trained_churn, tmp_path, mlflow_store) -> None:
    optimized = _optimize(trained_churn, tmp_path, mlflow_store)
    assert optimized.tflite_path is None and not Path(optimized.path("model.tflite")).exists()
    assert "ops outside the TFLite builtins" in optimized.properties.skipped_reason
    assert "\n" not in optimized.properties.skipped_reason


def test_tflite_none_publishes_without_a_tflite(trained_digits, tmp_path, mlflow_store) -> None:
    config = trained_digits["config"]
    changed = tmp_path / "no-tflite.yaml"
    changed.write_text(config.read_text() + "optimize: {tflite: none}\n")
    optimized = _optimize({**trained_digits, "config": changed}, tmp_path, mlflow_store)
    assert optimized.tflite_path is None and optimized.properties.tflite == "none"
    assert optimized.properties.skipped_reason is None and optimized.properties.saved_model_bytes > 0
