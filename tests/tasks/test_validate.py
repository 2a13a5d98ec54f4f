from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from tasks import ingest, validate
from tasks.artifacts import read_artifact

CURATED_SCHEMA = Path(__file__).resolve().parents[2] / "pipelines" / "digits.schema.pbtxt"


def _read(uri: str, kind: str, relative: str, message):
    with open(read_artifact(uri, kind).path(relative)) as fh:
        return text_format.Parse(fh.read(), message)


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


def test_good_data_passes_the_curated_schema(tiny_digits_csv, make_config, ctx) -> None:
    config = make_config(tiny_digits_csv)
    examples = ingest.run(config, ctx)["examples"]
    out = validate.run(config, ctx, examples=examples)

    anomalies = _read(out["anomalies"], "ExampleAnomalies", "Split-train/SchemaDiff.pbtxt", anomalies_pb2.Anomalies())
    assert not anomalies.anomaly_info
    schema = validate.read_schema(out["schema"])
    assert len(schema.feature) == 65
    stats = _read(out["statistics"], "ExampleStatistics", "Split-train/FeatureStats.pbtxt",
                  statistics_pb2.DatasetFeatureStatisticsList())
    features, _ = ingest.load_split(examples, "train")
    pixel_9 = next(f for f in stats.datasets[0].features if f.path.step == ["pixel_9"])
    assert stats.datasets[0].num_examples == len(features)
    assert pixel_9.num_stats.mean == pytest.approx(features[:, 9].mean(), rel=1e-6)
    assert pixel_9.num_stats.std_dev == pytest.approx(features[:, 9].std(), rel=1e-5)
    assert pixel_9.num_stats.common_stats.num_missing == 0


def test_missing_column_stops_the_run_after_writing_anomalies(tiny_digits_csv, tmp_path, make_config, ctx) -> None:
    config = make_config(_csv_with(tmp_path, tiny_digits_csv, drop="pixel_5"))
    examples = ingest.run(config, ctx)["examples"]
    with pytest.raises(validate.DataValidationError,
                       match="column 'pixel_5' is required by the schema but missing from the data") as caught:
        validate.run(config, ctx, examples=examples)
    assert "\n" not in str(caught.value)
    anomalies = _read(ctx.output_uri("validate", "anomalies"), "ExampleAnomalies", "Split-train/SchemaDiff.pbtxt",
                      anomalies_pb2.Anomalies())
    assert list(anomalies.anomaly_info) == ["pixel_5"]
    assert anomalies.anomaly_info["pixel_5"].reason[0].type == anomalies_pb2.AnomalyInfo.SCHEMA_MISSING_COLUMN


def test_unexpected_column_stops_the_run(tiny_digits_csv, tmp_path, make_config, ctx) -> None:
    config = make_config(_csv_with(tmp_path, tiny_digits_csv, add="brightness"))
    examples = ingest.run(config, ctx)["examples"]
    with pytest.raises(validate.DataValidationError, match="column 'brightness' is in the data but not in the schema"):
        validate.run(config, ctx, examples=examples)
    anomalies = _read(ctx.output_uri("validate", "anomalies"), "ExampleAnomalies", "Split-eval/SchemaDiff.pbtxt",
                      anomalies_pb2.Anomalies())
    assert anomalies.anomaly_info["brightness"].reason[0].type == anomalies_pb2.AnomalyInfo.SCHEMA_NEW_COLUMN


def test_label_out_of_the_schema_domain_is_an_anomaly(tmp_path, make_config, ctx) -> None:
    header = ",".join([f"pixel_{i}" for i in range(64)] + ["label"])
    rows = [",".join([str(i)] + ["1"] * 63 + [str(i % 12)]) for i in range(60)]  # labels 0..11
    source = tmp_path / "labels.csv"
    source.write_text("\n".join([header, *rows]) + "\n")
    config = make_config(source)
    examples = ingest.run(config, ctx)["examples"]
    with pytest.raises(validate.DataValidationError, match="column 'label' has value 11 above the schema's maximum 9"):
        validate.run(config, ctx, examples=examples)


def test_inferred_schema_is_used_without_a_curated_one(tiny_digits_csv, tmp_path, make_config, ctx) -> None:
    # With no curated schema an extra column is simply part of the inferred schema.
    config = make_config(_csv_with(tmp_path, tiny_digits_csv, add="brightness"), data={"schema_path": None})
    examples = ingest.run(config, ctx)["examples"]
    out = validate.run(config, ctx, examples=examples)
    assert read_artifact(out["schema"], "Schema").properties["origin"] == "inferred from the train split"
    assert "brightness" in [f.name for f in validate.read_schema(out["schema"]).feature]


def test_committed_demo_schema_is_what_inference_gives(digits_csv, make_config, ctx) -> None:
    examples = ingest.run(make_config(digits_csv), ctx)["examples"]
    inferred = validate.infer_schema(examples)
    curated = validate.load_schema(str(CURATED_SCHEMA))
    assert inferred == curated
    assert [f.name for f in curated.feature] == [f"pixel_{i}" for i in range(64)] + ["label"]
    assert all(f.type == schema_pb2.FLOAT and f.presence.min_fraction == 1 for f in curated.feature[:64])
    label = curated.feature[64]
    assert (label.type, label.int_domain.min, label.int_domain.max) == (schema_pb2.INT, 0, 9)


def test_missing_curated_schema_is_one_line(tiny_digits_csv, tmp_path, make_config, ctx) -> None:
    config = make_config(tiny_digits_csv, data={"schema_path": str(tmp_path / "nope.pbtxt")})
    examples = ingest.run(config, ctx)["examples"]
    with pytest.raises(validate.DataValidationError, match=r"^schema not found: .*nope\.pbtxt$"):
        validate.run(config, ctx, examples=examples)
    assert not Path(ctx.output_uri("validate", "anomalies")).exists()


def test_wrong_type_is_an_anomaly(tiny_digits_csv, make_config, ctx) -> None:
    # Naming pixel_3 the label makes ingest write it as INT and `label` as FLOAT: both contradict the schema.
    config = make_config(tiny_digits_csv, data={"label_column": "pixel_3"})
    examples = ingest.run(config, ctx)["examples"]
    with pytest.raises(validate.DataValidationError,
                       match="column 'pixel_3' has type INT, the schema expects FLOAT; column 'label' has type FLOAT, the schema expects INT$"):
        validate.run(config, ctx, examples=examples)
