from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks import ingest, optimize
from tasks.artifacts import read_artifact
from tasks.model import predict

pytestmark = pytest.mark.usefixtures("mlflow_env")


def test_dynamic_range_tflite_agrees_with_the_saved_model(trained, ctx) -> None:
    uri = optimize.run(trained["config"], ctx, model=trained["model"], examples=trained["examples"])["optimized"]
    artifact = read_artifact(uri, "OptimizedModel")
    tflite = Path(artifact.path("model.tflite")).read_bytes()
    assert artifact.properties["tflite_bytes"] == len(tflite)
    assert artifact.properties["tflite_bytes"] < artifact.properties["saved_model_bytes"]
    assert 0 < artifact.properties["tflite_gzip_bytes"] <= len(tflite)

    features, _ = ingest.load_split(trained["examples"], "eval")
    saved = predict(read_artifact(trained["model"], "Model").path("saved_model"), features).argmax(axis=1)
    lite = optimize.tflite_probabilities(tflite, features).argmax(axis=1)
    assert np.mean(saved == lite) >= 0.9
    assert artifact.properties["agreement_with_saved_model"] == np.mean(saved == lite)


def test_tflite_none_publishes_without_a_tflite(trained, make_config, tiny_digits_csv, ctx) -> None:
    config = make_config(tiny_digits_csv, optimize={"tflite": "none"})
    uri = optimize.run(config, ctx, model=trained["model"], examples=trained["examples"])["optimized"]
    artifact = read_artifact(uri, "OptimizedModel")
    assert not Path(artifact.path("model.tflite")).exists()
    assert artifact.properties["tflite"] == "none" and artifact.properties["saved_model_bytes"] > 0
