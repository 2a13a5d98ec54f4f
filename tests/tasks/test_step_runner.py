"""The generic step runner: inputs checked against the step's spec, bad input mapped to one line."""

from __future__ import annotations

import pytest

from tasks.artifacts.base import ArtifactError
from tasks.step_runner import StepContractError, StepRejected, run_step
from tests.tasks.conftest import evaluate_inputs, resolve


def test_an_input_of_the_wrong_kind_is_refused_before_the_step_runs(trained_churn, tmp_path, mlflow_store) -> None:
    run = resolve(trained_churn["config"], tmp_path, mlflow_store)
    with pytest.raises(ArtifactError, match=r"artifact at .*/ingest/examples is a Examples, expected a Model"):
        run_step("evaluate", run, inputs={"optimized": trained_churn["optimized"], "model": trained_churn["examples"],
                                          "examples": trained_churn["examples"]})


def test_inputs_must_match_the_spec(trained_churn, tmp_path, mlflow_store) -> None:
    run = resolve(trained_churn["config"], tmp_path, mlflow_store)
    with pytest.raises(StepContractError,
                       match=r"evaluate takes inputs \['examples', 'model', 'optimized'\], got \['model'\]"):
        run_step("evaluate", run, inputs={"model": trained_churn["model"]})


def test_an_incomplete_artifact_is_refused(trained_churn, tmp_path, mlflow_store) -> None:
    run = resolve(trained_churn["config"], tmp_path, mlflow_store)
    empty = tmp_path / "half-written"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="no complete artifact at .*half-written"):
        run_step("evaluate", run, inputs={"optimized": trained_churn["optimized"], "model": str(empty),
                                          "examples": trained_churn["examples"]})


def test_bad_input_becomes_one_line_that_names_its_kind(trained_churn, tmp_path, mlflow_store) -> None:
    config = tmp_path / "sliced.yaml"
    config.write_text(trained_churn["config"].read_text() + "evaluate: {slices: [[colour]]}\n")
    run = resolve(config, tmp_path, mlflow_store)
    with pytest.raises(StepRejected) as caught:
        run_step("evaluate", run, inputs=evaluate_inputs(trained_churn))
    assert str(caught.value).startswith("EvaluationError: evaluate.slices: 'colour'") and "\n" not in str(caught.value)
