"""Evaluate: one test per gate outcome (TFX style), for each task's metrics and directions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.artifacts.evaluation import ModelEvaluation
from tasks.step_runner import StepRejected, run_step
from tests.tasks.conftest import resolve, step_folder


def _evaluate(trained: dict, root: Path, tracking: str, thresholds: dict) -> str:
    run = resolve(trained["config"], root, tracking, params={"thresholds": thresholds})
    return run_step("evaluate", run, inputs={"model": trained["model"], "examples": trained["examples"]})["evaluation"]


def test_blessed_digits_model_publishes_metrics_checks_and_a_confusion_matrix(trained_digits, tmp_path,
                                                                             mlflow_store) -> None:
    evaluation = ModelEvaluation.read(_evaluate(trained_digits, tmp_path, mlflow_store, {"accuracy": 0.0}))
    props = evaluation.properties
    assert props.blessed and props.task == "classification"
    assert set(props.metrics) == {"accuracy", "precision", "recall", "f1"}, "no auc: ten classes"
    assert [c.name for c in props.checks] == ["accuracy >= 0"] and props.checks[0].passed
    details = json.loads(Path(evaluation.path("metrics.json")).read_text())
    assert sum(map(sum, details["confusion_matrix"])) == props.num_examples > 0
    assert set(details["per_class"]) == {str(d) for d in range(10)}
    assert Path(evaluation.path(props.plot)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_binary_classification_reports_auc(trained_churn, tmp_path, mlflow_store) -> None:
    props = ModelEvaluation.read(_evaluate(trained_churn, tmp_path, mlflow_store, {"auc": 0.5})).properties
    assert 0.5 <= props.metrics["auc"] <= 1 and props.blessed


def test_unblessed_model_fails_after_publishing_why(trained_digits, tmp_path, mlflow_store) -> None:
    with pytest.raises(StepRejected, match=r"is not blessed: eval accuracy 0\.\d{4} does not meet "
                                           r"evaluate.thresholds.accuracy \(>= 1\)") as caught:
        _evaluate(trained_digits, tmp_path, mlflow_store, {"accuracy": 1.0})
    assert "\n" not in str(caught.value)
    props = ModelEvaluation.read(str(step_folder(tmp_path, "digits", "evaluate") / "evaluation")).properties
    assert props.blessed is False and props.checks[0].passed is False and props.checks[0].value < 1.0


@pytest.mark.parametrize(("thresholds", "blessed"), [({"rmse": 1e6, "r2": -1e6}, True), ({"rmse": 0.001}, False),
                                                     ({"mae": 0.001}, False), ({"r2": 0.9999}, False)])
def test_regression_thresholds_follow_each_metrics_direction(thresholds, blessed, trained_house, tmp_path,
                                                             mlflow_store) -> None:
    if blessed:
        uri = _evaluate(trained_house, tmp_path, mlflow_store, thresholds)
        props = ModelEvaluation.read(uri).properties
        assert props.blessed and {"rmse", "mae", "r2"} == set(props.metrics)
        assert props.plot == "residuals.png"
    else:
        with pytest.raises(StepRejected, match="is not blessed"):
            _evaluate(trained_house, tmp_path, mlflow_store, thresholds)


def test_auc_on_a_task_with_ten_classes_is_a_config_error(trained_digits, tmp_path, mlflow_store) -> None:
    with pytest.raises(StepRejected, match=r"ConfigError: evaluate.thresholds: 'auc' is not computed for this task "
                                           r"\(10 classes; auc needs exactly two\)"):
        _evaluate(trained_digits, tmp_path, mlflow_store, {"auc": 0.9})


def test_a_metric_the_task_lacks_is_refused_when_the_run_is_resolved(trained_house, tmp_path, mlflow_store) -> None:
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match="'accuracy' is not a regression metric; regression metrics are mae, r2, rmse"):
        resolve(trained_house["config"], tmp_path, mlflow_store, params={"thresholds": {"accuracy": 0.9}})
