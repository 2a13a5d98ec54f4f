"""Validate: statistics per split, the schema (curated wins, else inferred and stored) and anomalies,
one test per anomaly kind; anomalies stop the run after the artifacts are published."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from tasks.artifacts.anomalies import ExampleAnomalies
from tasks.artifacts.examples import Examples
from tasks.artifacts.schema import Schema
from tasks.artifacts.statistics import ExampleStatistics
from tasks.features import load_arrays
from tasks.step_runner import StepRejected, run_step, run_steps
from tests.tasks.conftest import churn_pipeline, digits_pipeline, resolve, step_folder


def _csv_with(tmp_path: Path, source: Path, drop: str | None = None, add: str | None = None) -> Path:
    lines = source.read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != drop]
    out = []
    for n, line in enumerate(lines):
        fields = [line.split(",")[i] for i in keep]
        if add:
            fields.insert(-1, add if n == 0 else "1")
        out.append(",".join(fields))
    path = tmp_path / "changed.csv"
    path.write_text("\n".join(out) + "\n")
    return path


def _validate(config: Path, root: Path, tracking: str) -> tuple[str, dict[str, str]]:
    run = resolve(config, root, tracking)
    return run, run_steps(run, ["ingest", "validate"])


def test_good_data_passes_the_curated_schema(tiny_digits_csv, tmp_path, mlflow_store) -> None:
    _, out = _validate(digits_pipeline(tmp_path, tiny_digits_csv), tmp_path, mlflow_store)
    assert not ExampleAnomalies.read(out["anomalies"]).anomalies("train").anomaly_info
    schema = Schema.read(out["schema"])
    assert schema.properties.curated and len(schema.schema().feature) == 65
    stats = ExampleStatistics.read(out["statistics"]).statistics("train").datasets[0]
    examples = Examples.read(out["examples"])
    train_rows = examples.properties.row_counts["train"]
    assert stats.num_examples == train_rows
    pixel_9 = next(f for f in stats.features if f.path.step == ["pixel_9"])
    from tasks.features import FeatureSpec, LabelSpec

    spec = FeatureSpec(name="pixel_9", kind="numeric", columns=["pixel_9"], column_types=["float"])
    label = LabelSpec(column="label", value_type="int", task="regression")
    values, _ = load_arrays(examples.split_files("train"), [spec], label)
    assert pixel_9.num_stats.mean == pytest.approx(values["pixel_9"].mean(), rel=1e-6)
    assert pixel_9.num_stats.common_stats.num_missing == 0


def test_without_a_curated_schema_one_is_inferred_and_stored(churn_csv, tmp_path, mlflow_store) -> None:
    _, out = _validate(churn_pipeline(tmp_path, churn_csv), tmp_path, mlflow_store)
    schema = Schema.read(out["schema"])
    assert not schema.properties.curated and schema.properties.origin == "inferred from the train split"
    features = {f.name: f for f in schema.schema().feature}
    assert features["plan"].type == schema_pb2.BYTES and not features["plan"].HasField("string_domain")
    assert features["paperless"].HasField("bool_domain")
    assert features["region"].presence.min_fraction == 0  # missing in some rows: not required
    assert features["tenure"].presence.min_fraction == 1.0
    stats = ExampleStatistics.read(out["statistics"]).statistics("train").datasets[0]
    plan = next(f for f in stats.features if f.path.step == ["plan"])
    assert plan.string_stats.unique == 3 and {v.value for v in plan.string_stats.top_values} == {"basic", "pro", "premium"}


def test_missing_column_stops_the_run_after_writing_anomalies(tiny_digits_csv, tmp_path, mlflow_store) -> None:
    config = digits_pipeline(tmp_path, _csv_with(tmp_path, tiny_digits_csv, drop="pixel_5"))
    run = resolve(config, tmp_path, mlflow_store)
    examples = run_step("ingest", run, inputs={})["examples"]
    with pytest.raises(StepRejected, match="column 'pixel_5' is required by the schema but missing from the data") \
            as caught:
        run_step("validate", run, inputs={"examples": examples})
    assert "\n" not in str(caught.value)
    anomalies = ExampleAnomalies.read(str(step_folder(tmp_path, "digits", "validate") / "anomalies"))
    assert list(anomalies.anomalies("train").anomaly_info) == ["pixel_5"]
    reason = anomalies.anomalies("train").anomaly_info["pixel_5"].reason[0]
    assert reason.type == anomalies_pb2.AnomalyInfo.SCHEMA_MISSING_COLUMN


def test_unexpected_column_stops_the_run(tiny_digits_csv, tmp_path, mlflow_store) -> None:
    config = digits_pipeline(tmp_path, _csv_with(tmp_path, tiny_digits_csv, add="brightness"))
    with pytest.raises(StepRejected, match="column 'brightness' is in the data but not in the schema"):
        _validate(config, tmp_path, mlflow_store)


def test_a_category_outside_the_curated_domain_stops_the_run(churn_csv, tmp_path, mlflow_store) -> None:
    schema = tmp_path / "churn.schema.pbtxt"
    schema.write_text("".join(
        f'feature {{ name: "{name}" type: {kind} {extra} }}\n' for name, kind, extra in [
            ("tenure", "INT", ""), ("plan", "BYTES", 'string_domain { value: "basic" value: "pro" }'),
            ("monthly", "FLOAT", ""), ("paperless", "INT", "bool_domain {}"), ("region", "BYTES", ""),
            ("churned", "BYTES", 'string_domain { value: "no" value: "yes" }')]))
    config = churn_pipeline(tmp_path, churn_csv, data={"schema_path": str(schema)})
    with pytest.raises(StepRejected, match="column 'plan' has values not in the schema's domain: 'premium'"):
        _validate(config, tmp_path, mlflow_store)


def test_a_type_change_stops_the_run(churn_csv, tmp_path, mlflow_store) -> None:
    schema = tmp_path / "churn.schema.pbtxt"
    schema.write_text("".join(f'feature {{ name: "{n}" type: {t} }}\n' for n, t in [
        ("tenure", "INT"), ("plan", "INT"), ("monthly", "FLOAT"), ("paperless", "INT"), ("region", "BYTES"),
        ("churned", "BYTES")]))
    config = churn_pipeline(tmp_path, churn_csv, data={"schema_path": str(schema)})
    with pytest.raises(StepRejected, match="column 'plan' has type BYTES, the schema expects INT"):
        _validate(config, tmp_path, mlflow_store)
