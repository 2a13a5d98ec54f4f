"""Ingest: typed columns, missing values counted, a stable hash split, one-line errors and nothing
half-written on bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.cli.demo_data import DIGITS_HEADER
from tasks.artifacts.examples import SPLITS, Examples
from tasks.step_runner import StepRejected, run_step
from tests.tasks.conftest import churn_pipeline, digits_pipeline, resolve, step_folder, write_pipeline


@pytest.fixture
def ingest(tmp_path: Path, mlflow_store: str):
    def run(config: Path, run_id: str | None = None) -> Examples:
        snapshot = resolve(config, tmp_path, mlflow_store, run_id=run_id)
        return Examples.read(run_step("ingest", snapshot, inputs={})["examples"])

    return run


def test_digits_split_deterministically_with_the_curated_schemas_types(tiny_digits_csv, tmp_path, ingest) -> None:
    examples = ingest(digits_pipeline(tmp_path / "a", tiny_digits_csv, data={"num_shards": 3}))
    props = examples.properties
    assert props.row_counts["train"] + props.row_counts["eval"] == 400
    assert 0.1 < props.row_counts["eval"] / 400 < 0.3  # eval_percent 20, by hash
    # The CSV holds whole numbers; the curated schema says FLOAT, and every value fits it.
    assert {c.type for c in examples.feature_columns} == {"float"} and [c.name for c in props.columns] == DIGITS_HEADER
    assert examples.column("label").type == "int"
    for split in SPLITS:
        assert len(examples.split_files(split)) == 3

    # Same data, another run and another row order: the same rows land in the same splits.
    lines = tiny_digits_csv.read_text().splitlines()
    shuffled = tmp_path / "reversed.csv"
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    again = ingest(digits_pipeline(tmp_path / "b", shuffled, data={"num_shards": 3}), run_id="rerun")
    for split in SPLITS:
        assert sorted(map(repr, rows(examples, split))) == sorted(map(repr, rows(again, split)))


def test_strings_booleans_and_missing_values_are_typed_and_counted(churn_csv, tmp_path, ingest) -> None:
    examples = ingest(churn_pipeline(tmp_path, churn_csv))
    columns = {c.name: c for c in examples.properties.columns}
    assert {n: c.type for n, c in columns.items()} == {
        "tenure": "int", "plan": "string", "monthly": "float", "paperless": "bool", "region": "string",
        "churned": "string"}
    assert columns["monthly"].missing == 17  # every 37th of 600 rows
    assert columns["region"].missing > 100 and columns["plan"].missing == 0
    train = rows(examples, "train")
    assert {row["churned"] for row in train} == {"yes", "no"}
    assert {row["paperless"] for row in train} == {True, False}
    missing_region = next(row for row in train if row["region"] is None)
    assert missing_region["plan"]  # a missing value is null, the row's other values are there


def rows(examples: Examples, split: str) -> list[dict]:
    return [row for batch in examples.batches(split) for row in batch.to_pylist()]


def test_rows_without_a_label_are_dropped_and_counted(tmp_path, ingest) -> None:
    source = tmp_path / "d.csv"
    source.write_text("x,y\n" + "".join(f"{i},{'' if i % 10 == 0 else i % 2}\n" for i in range(100)))
    examples = ingest(write_pipeline(tmp_path, "p", source, {"type": "classification"}, label="y"))
    assert examples.properties.rows_without_label == 10
    assert sum(examples.properties.row_counts.values()) == 90


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"^DataError: data source not found: .*missing\.csv$"),
        ("", r"data\.csv: the CSV is empty \(no header row\)$"),
        ("pixel_0,pixel_1,label\n", r"data\.csv: the CSV has a header but no data rows$"),
        ("pixel_0,pixel_1\n1,2\n", r"data\.csv: label column 'label' is not in the header \(columns: pixel_0, pixel_1\)$"),
        ("pixel_0,pixel_1,label\n1,2\n", r"data\.csv line 2: 2 fields, the header has 3$"),
        ("a,a,label\n1,2,3\n", r"header has duplicate or empty column names \['a'\]$"),
        ("a,label\n1,0\n", r"the train split is empty|the eval split is empty"),
    ],
    ids=["missing-path", "empty", "header-only", "no-label", "short-row", "duplicate-header", "one-row"],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(content, message, tmp_path, mlflow_store) -> None:
    source = tmp_path / "missing.csv" if content is None else _write(tmp_path, content)
    snapshot = resolve(write_pipeline(tmp_path / "cfg", "p", source, {"type": "classification"}), tmp_path,
                       mlflow_store)
    with pytest.raises(StepRejected, match=message) as caught:
        run_step("ingest", snapshot, inputs={})
    assert "\n" not in str(caught.value)
    ingest_dir = step_folder(tmp_path, "p", "ingest")
    assert not ingest_dir.exists() or os.listdir(ingest_dir) == [], "no artifact and no staging leftovers"


def test_ragged_rows_within_max_bad_rows_are_skipped_counted_and_warned(tmp_path, mlflow_store) -> None:
    source = tmp_path / "d.csv"
    good = "".join(f"{i},{i % 2}\n" for i in range(60))
    source.write_text("x,label\n" + good + "7\n" + "8,1,extra\n" + good)
    config = write_pipeline(tmp_path / "cfg", "p", source, {"type": "classification"}, data={"max_bad_rows": 2})
    snapshot = resolve(config, tmp_path, mlflow_store)
    outputs = run_step("ingest", snapshot, inputs={})
    props = Examples.read(outputs["examples"]).properties
    assert props.bad_rows == 2 and sum(props.row_counts.values()) == 120
    assert "2 rows skipped" in props.bad_rows_note and "'8,1,extra'" in props.bad_rows_note
    validated = run_step("validate", snapshot, inputs={"examples": outputs["examples"]})
    from tasks.artifacts.anomalies import ExampleAnomalies

    anomalies = ExampleAnomalies.read(validated["anomalies"]).properties
    assert anomalies.num_anomalies == 0 and anomalies.warnings == [props.bad_rows_note]

    one_less = write_pipeline(tmp_path / "cfg1", "p", source, {"type": "classification"}, data={"max_bad_rows": 1})
    with pytest.raises(StepRejected, match=r"d\.csv line 62: 1 fields, the header has 2 \(more than data\.max_bad_rows: 1\)$"):
        run_step("ingest", resolve(one_less, tmp_path / "again", mlflow_store), inputs={})


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".tfrecord.gz"])
def test_every_format_ingests_to_the_same_columns(churn_csv, tmp_path, ingest, suffix) -> None:
    import json

    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    table = pa_csv.read_csv(churn_csv)
    source = tmp_path / f"churn{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, source)
    elif suffix == ".jsonl":
        source.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    else:
        from tests.tasks.test_data_readers import write_tfrecord

        write_tfrecord(source, table.to_pylist(), gzip_records=True)
    from_csv = ingest(churn_pipeline(tmp_path / "csv", churn_csv), run_id="csv")
    examples = ingest(churn_pipeline(tmp_path / "other", source), run_id="other")
    assert sum(examples.properties.row_counts.values()) == sum(from_csv.properties.row_counts.values())
    assert examples.properties.source_format == suffix.split(".")[1]
    types = {c.name: c.type for c in examples.properties.columns}
    expected = {c.name: c.type for c in from_csv.properties.columns}
    if suffix == ".tfrecord.gz":
        expected["paperless"] = "int"  # tf.train.Example has no booleans: int64 0/1
    assert types == expected


def test_a_folder_of_csv_parts_ingests_as_the_one_file_does(churn_csv, tmp_path, ingest) -> None:
    header, *lines = churn_csv.read_text().splitlines()
    folder = tmp_path / "parts"
    folder.mkdir()
    for part in range(3):
        (folder / f"part-{part}.csv").write_text("\n".join([header, *lines[part::3]]) + "\n")
    whole = ingest(churn_pipeline(tmp_path / "whole", churn_csv), run_id="whole")
    parts = ingest(churn_pipeline(tmp_path / "folder", folder), run_id="folder")
    assert parts.properties.num_shards == 3 * whole.properties.num_shards, "each file's shards"
    for split in SPLITS:
        assert sorted(map(repr, rows(parts, split))) == sorted(map(repr, rows(whole, split))), "the same rows, split alike"
