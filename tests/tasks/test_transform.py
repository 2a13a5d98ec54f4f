"""Transform: the preprocessing state adapted on the train split, built from the schema."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.artifacts.examples import Examples
from tasks.artifacts.transform import TransformGraph
from tasks.features import LabelSpec, load_arrays
from tasks.step_runner import StepRejected, run_steps
from tests.tasks.conftest import churn_pipeline, house_pipeline, resolve, write_pipeline

STEPS = ["ingest", "validate", "transform"]


def test_digits_pixels_are_one_vector_with_numpys_mean_and_variance(trained_digits) -> None:
    preprocessing = TransformGraph.read(trained_digits["transform"]).preprocessing()
    [pixels] = preprocessing.features
    assert (pixels.name, pixels.kind, pixels.dtype, pixels.shape) == ("pixels", "vector", "float32", [64])
    assert pixels.columns == [f"pixel_{i}" for i in range(64)]
    examples = Examples.read(trained_digits["examples"])
    values, _ = load_arrays(examples.split_files("train"), [pixels], LabelSpec(column="label", value_type="int",
                                                                              task="regression"))
    np.testing.assert_allclose(pixels.mean, values["pixels"].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(pixels.variance, values["pixels"].var(axis=0), rtol=1e-4, atol=1e-9)
    label = preprocessing.label
    assert label.classes == list(range(10)), "from the curated schema's int_domain 0..9"


def test_churn_features_by_kind_with_adapted_vocabularies(trained_churn) -> None:
    preprocessing = TransformGraph.read(trained_churn["transform"]).preprocessing()
    kinds = {f.name: f.kind for f in preprocessing.features}
    assert kinds == {"tenure": "numeric", "plan": "string", "monthly": "numeric", "paperless": "boolean",
                     "region": "string"}
    assert sorted(preprocessing.feature("plan").vocabulary) == ["basic", "premium", "pro"]
    assert sorted(preprocessing.feature("region").vocabulary) == ["north", "south"], "missing ('') is OOV"
    monthly = preprocessing.feature("monthly")
    assert not np.isnan(monthly.mean[0]), "the mean skips missing values"
    assert preprocessing.label.classes == ["no", "yes"] and preprocessing.label.value_type == "string"


def test_regression_label_is_standardised(trained_house) -> None:
    label = TransformGraph.read(trained_house["transform"]).preprocessing().label
    assert label.task == "regression" and label.classes is None
    assert 200 < label.mean < 800 and label.std > 10


def test_discretize_and_a_curated_domain(churn_csv, tmp_path, mlflow_store) -> None:
    schema = tmp_path / "s.pbtxt"
    schema.write_text("".join(f'feature {{ name: "{n}" type: {t} {x} }}\n' for n, t, x in [
        ("tenure", "INT", ""), ("plan", "BYTES", 'string_domain { value: "premium" value: "pro" value: "basic" }'),
        ("monthly", "FLOAT", ""), ("paperless", "INT", "bool_domain {}"), ("region", "BYTES", ""),
        ("churned", "BYTES", "")]))
    config = churn_pipeline(tmp_path, churn_csv, data={"schema_path": str(schema)},
                            transform={"discretize": {"tenure": 4}},
                            task={"type": "classification", "classes": ["yes", "no"]})
    out = run_steps(resolve(config, tmp_path, mlflow_store), STEPS)
    preprocessing = TransformGraph.read(out["transform"]).preprocessing()
    assert preprocessing.feature("plan").vocabulary == ["premium", "pro", "basic"], "the schema's order"
    boundaries = preprocessing.feature("tenure").bin_boundaries
    assert len(boundaries) == 3 and boundaries == sorted(boundaries) and 0 < boundaries[0] < boundaries[-1] < 72
    assert preprocessing.label.classes == ["yes", "no"], "task.classes sets the output order"


@pytest.mark.parametrize(("task", "message"), [
    ({"type": "classification", "classes": ["no", "maybe"]}, r"label column 'churned' has values \['yes'\] that are "
                                                            r"not in the classes"),
    ({"type": "regression"}, "label column 'churned' holds string values; regression needs numbers"),
    ({"type": "classification", "classes": [0, 1]}, "class 0 does not match label column 'churned'"),
])
def test_a_label_that_does_not_fit_the_task_is_refused(task, message, churn_csv, tmp_path, mlflow_store) -> None:
    config = write_pipeline(tmp_path, "churn", churn_csv, task, label="churned")
    with pytest.raises(StepRejected, match=message) as caught:
        run_steps(resolve(config, tmp_path, mlflow_store), STEPS)
    assert "\n" not in str(caught.value)


def test_classification_of_a_float_label_is_refused(house_csv, tmp_path, mlflow_store) -> None:
    config = house_pipeline(tmp_path, house_csv, task={"type": "classification"})
    with pytest.raises(StepRejected, match="label column 'price' holds floats; classification needs"):
        run_steps(resolve(config, tmp_path, mlflow_store), STEPS)
