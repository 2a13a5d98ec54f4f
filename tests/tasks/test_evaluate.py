"""One test per gate outcome (TFX style): blessed, and not blessed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import evaluate
from tasks.artifacts import read_artifact

pytestmark = pytest.mark.usefixtures("mlflow_env")


def test_blessed_model_publishes_its_evaluation(trained, make_config, tiny_digits_csv, ctx) -> None:
    config = make_config(tiny_digits_csv, evaluate={"min_accuracy": 0.0})
    uri = evaluate.run(config, ctx, model=trained["model"], examples=trained["examples"])["evaluation"]
    artifact = read_artifact(uri, "ModelEvaluation")
    assert artifact.properties["blessed"] is True
    metrics = json.loads(Path(artifact.path("metrics.json")).read_text())
    assert metrics["accuracy"] == artifact.properties["accuracy"]
    assert sum(map(sum, metrics["confusion_matrix"])) == artifact.properties["num_examples"] > 0
    assert set(metrics["per_class_accuracy"]) == {str(d) for d in range(10)}
    assert Path(artifact.path("confusion_matrix.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unblessed_model_fails_after_publishing_why(trained, make_config, tiny_digits_csv, ctx) -> None:
    config = make_config(tiny_digits_csv, evaluate={"min_accuracy": 1.0})
    with pytest.raises(evaluate.ModelNotBlessedError, match=r"eval accuracy 0\.\d{4} < evaluate.min_accuracy 1\.0000"):
        evaluate.run(config, ctx, model=trained["model"], examples=trained["examples"])
    artifact = read_artifact(ctx.output_uri("evaluate", "evaluation"), "ModelEvaluation")
    assert artifact.properties["blessed"] is False
    assert artifact.properties["accuracy"] < 1.0
