"""Evaluate: one test per decision (TFX style) — value thresholds, change thresholds against the
champion, slices — and not blessed is an outcome, published, never a crash."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from tasks.artifacts.evaluation import ModelEvaluation
from tasks.model_registry import promote
from tasks.step_runner import StepRejected, run_step, run_steps
from tests.tasks.conftest import UNTIL_TRAIN, digits_pipeline, evaluate_inputs, resolve


def _config(trained: dict, root: Path, model_name: str | None = None, extra: str = "") -> Path:
    """The trained pipeline's YAML with its own registered model (no champion unless a test makes one)."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "pipeline.yaml"
    name = model_name or f"m-{uuid.uuid4().hex[:8]}"
    config.write_text(trained["config"].read_text() + f"registry: {{model_name: {name}}}\n" + extra)
    return config


def _evaluate(trained: dict, root: Path, tracking: str, model: str | None = None, extra: str = "",
              **params) -> ModelEvaluation:
    run = resolve(_config(trained, root, model, extra), root, tracking, params=params)
    out = run_step("evaluate", run, inputs=evaluate_inputs(trained))
    return ModelEvaluation.read(out["evaluation"])


@pytest.fixture(scope="module")
def weak_digits(tiny_digits_csv, mlflow_store, tmp_path_factory) -> dict:
    """The digits CNN after one epoch: worse than the shared three-epoch model."""
    root = tmp_path_factory.mktemp("weak-digits")
    config = digits_pipeline(root, tiny_digits_csv, train={"epochs": 1, "learning_rate": 0.0005},
                             optimize={"variants": []})
    return {"config": config, **run_steps(resolve(config, root, mlflow_store, run_id="weak"), [*UNTIL_TRAIN, "optimize"])}


def _make_champion(trained: dict, root: Path, tracking: str, name: str) -> int:
    """Register `trained` under `name` (through the pipeline's own register step) and make it champion."""
    run = resolve(_config(trained, root, name), root, tracking, params={"thresholds": {}}, run_id=f"champ-{name}")
    out = run_steps(run, ["optimize", "evaluate", "register"], available=trained)
    from mlflow import MlflowClient

    from tasks.artifacts.registered import RegisteredModel

    version = RegisteredModel.read(out["registered"]).properties.version
    promote(MlflowClient(tracking), name, version, "test champion", by="test")
    return version


def test_no_champion_and_value_thresholds_met_bless(trained_digits, tmp_path, mlflow_store) -> None:
    evaluation = _evaluate(trained_digits, tmp_path, mlflow_store, thresholds={"accuracy": 0.0},
                           change_thresholds={"accuracy": {"absolute": -0.005}})
    props = evaluation.properties
    assert props.blessed and props.task == "classification" and props.champion_version is None
    assert set(props.metrics) == {"accuracy", "precision", "recall", "f1"}, "no auc: ten classes"
    assert [(c.name, c.passed) for c in props.checks] == [("accuracy >= 0", True), ("accuracy vs champion", True)]
    assert props.checks[1].reason.startswith("no champion yet")
    report = json.loads(Path(evaluation.path("metrics.json")).read_text())
    assert sum(map(sum, report["candidate"]["confusion_matrix"])) == props.num_examples > 0
    assert set(report["candidate"]["per_class"]) == {str(d) for d in range(10)}
    assert props.plots == ["confusion_matrix.png"]
    assert Path(evaluation.path("confusion_matrix.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_value_threshold_not_met_is_an_outcome_not_a_crash(trained_digits, tmp_path, mlflow_store) -> None:
    props = _evaluate(trained_digits, tmp_path, mlflow_store, thresholds={"accuracy": 1.0}).properties
    assert props.blessed is False
    [check] = props.checks
    assert (check.name, check.metric, check.slice, check.threshold, check.passed) == (
        "accuracy >= 1", "accuracy", None, 1.0, False)
    assert check.value < 1.0 and "does not meet evaluate.thresholds.accuracy (>= 1)" in check.reason
    assert props.first_failure == check.reason


def test_a_candidate_worse_than_the_champion_beyond_the_change_threshold_is_not_blessed(
        trained_digits, weak_digits, tmp_path, mlflow_store) -> None:
    name = f"m-{uuid.uuid4().hex[:8]}"
    version = _make_champion(trained_digits, tmp_path / "champion", mlflow_store, name)
    props = _evaluate(weak_digits, tmp_path, mlflow_store, model=name, thresholds={},
                      change_thresholds={"accuracy": {"absolute": -0.005}}).properties
    assert props.champion_version == version and props.blessed is False
    [check] = props.checks
    champion_accuracy = props.champion_metrics["accuracy"]
    assert check.name == "accuracy vs champion" and check.value == props.metrics["accuracy"] < champion_accuracy
    assert check.threshold == pytest.approx(champion_accuracy - 0.005)
    assert re.search(rf"vs champion v{version} \((tflite|saved_model)\) {champion_accuracy:.4f}", check.reason)
    assert "worse" in check.reason


def test_a_candidate_better_than_the_champion_passes_the_change_threshold(
        trained_digits, weak_digits, tmp_path, mlflow_store) -> None:
    name = f"m-{uuid.uuid4().hex[:8]}"
    _make_champion(weak_digits, tmp_path / "champion", mlflow_store, name)
    props = _evaluate(trained_digits, tmp_path, mlflow_store, model=name, thresholds={},
                      change_thresholds={"accuracy": {"relative": 0.01}}).properties
    assert props.blessed, props.checks
    assert props.metrics["accuracy"] >= props.champion_metrics["accuracy"] * 1.01


def test_a_slice_below_its_threshold_is_named(trained_churn, tmp_path, mlflow_store) -> None:
    props = _evaluate(trained_churn, tmp_path, mlflow_store, extra=(
        "evaluate:\n  slices: [[plan], [plan, paperless]]\n  slice_thresholds: {accuracy: 0.999}\n"
        "  min_slice_examples: 5\n")).properties
    assert props.blessed is False
    failed = [c for c in props.checks if not c.passed]
    assert failed and all(c.slice for c in failed)
    assert failed[0].name.startswith("accuracy >= 0.999 on plan=")
    assert f"on {failed[0].slice} " in failed[0].reason
    report = json.loads(Path(_evaluation_path(tmp_path)).read_text())
    slices = {s["slice"]: s for s in report["slices"]}
    assert {"plan=basic", "plan=pro", "plan=premium", "plan=basic, paperless=true"} <= set(slices)
    assert sum(slices[f"plan={p}"]["examples"] for p in ("basic", "pro", "premium")) == props.num_examples


def _evaluation_path(root: Path) -> str:
    return str(next(root.glob("artifacts/churn/*/evaluate/evaluation/metrics.json")))


def test_numeric_slices_need_bucket_boundaries_and_are_named_by_bucket(trained_churn, tmp_path, mlflow_store) -> None:
    with pytest.raises(StepRejected, match=r"column 'monthly' has \d+ values in the eval split; give "
                                           r"evaluate.bucket_boundaries.monthly"):
        _evaluate(trained_churn, tmp_path / "a", mlflow_store, extra="evaluate:\n  slices: [[monthly]]\n")
    evaluation = _evaluate(trained_churn, tmp_path / "b", mlflow_store, extra=(
        "evaluate:\n  slices: [[monthly]]\n  bucket_boundaries: {monthly: [40, 80]}\n"))
    report = json.loads(Path(evaluation.path("metrics.json")).read_text())
    assert {s["slice"] for s in report["slices"]} == {"monthly=<40", "monthly=[40,80)", "monthly=>=80",
                                                      "monthly=(missing)"}
    assert evaluation.properties.plots == ["confusion_matrix.png", "slices.png"]


def test_an_unknown_slice_column_is_refused(trained_churn, tmp_path, mlflow_store) -> None:
    with pytest.raises(StepRejected, match="evaluate.slices: 'colour' is not a feature column"):
        _evaluate(trained_churn, tmp_path, mlflow_store, extra="evaluate:\n  slices: [[colour]]\n")


@pytest.mark.parametrize(("thresholds", "blessed"), [({"rmse": 1e6, "r2": -1e6}, True), ({"rmse": 0.001}, False),
                                                     ({"mae": 0.001}, False), ({"r2": 0.9999}, False)])
def test_regression_thresholds_follow_each_metrics_direction(thresholds, blessed, trained_house, tmp_path,
                                                             mlflow_store) -> None:
    props = _evaluate(trained_house, tmp_path, mlflow_store, thresholds=thresholds).properties
    assert props.blessed is blessed and {"rmse", "mae", "r2"} == set(props.metrics)
    assert props.plots == ["residuals.png"]


def test_auc_on_a_task_with_ten_classes_is_a_config_error(trained_digits, tmp_path, mlflow_store) -> None:
    with pytest.raises(StepRejected, match=r"ConfigError: evaluate thresholds: 'auc' is not computed for this task "
                                           r"\(10 classes; auc needs exactly two\)"):
        _evaluate(trained_digits, tmp_path, mlflow_store, thresholds={"auc": 0.9})


def test_a_metric_the_task_lacks_is_refused_when_the_run_is_resolved(trained_house, tmp_path, mlflow_store) -> None:
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match="'accuracy' is not a regression metric; regression metrics are mae, r2, rmse"):
        resolve(trained_house["config"], tmp_path, mlflow_store, params={"change_thresholds": {
            "accuracy": {"absolute": 0}}})
