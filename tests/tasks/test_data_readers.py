"""tasks.data: kiln's value rules on whole Arrow columns agree with the scalar rules; every format reads to the
same profile, from a path or object storage; bad input is one line naming the file and the row."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.columns import CsvError, parse_value, value_type
from tasks.data import values
from tasks.data.profile import profile_source
from tasks.data.readers import DataError, Reader, source_format

ROWS = [{"x": 1.5, "n": 3, "flag": True, "city": "Oslo", "label": "a"},
        {"x": None, "n": 4, "flag": False, "city": None, "label": "b"},
        {"x": -2.0, "n": None, "flag": True, "city": "Lima", "label": "a"}]
CSV = "x,n,flag,city,label\n1.5,3,true,Oslo,a\n,4,false,,b\n-2.0,,TRUE,Lima,a\n"


def write_all_formats(folder) -> dict[str, str]:
    paths = {"csv": folder / "d.csv", "gz": folder / "d.csv.gz", "parquet": folder / "d.parquet",
             "jsonl": folder / "d.jsonl"}
    paths["csv"].write_text(CSV)
    paths["gz"].write_bytes(gzip.compress(CSV.encode()))
    pq.write_table(pa.Table.from_pylist(ROWS), paths["parquet"])
    paths["jsonl"].write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return {name: str(path) for name, path in paths.items()}


# --- value rules: Arrow kernels and the scalar rules agree --------------------------------------------

TOKENS = st.sampled_from(["", " ", "nan", "NaN", "-nan", "true", "FALSE", "0", "-12", "+7", "007", "1.5", ".5", "5.",
                          "1e3", "2E-2", "inf", "-Infinity", "1e999", "0x10", "1_000", "abc", "١٢", "99999999999999999999"])


@settings(max_examples=200, deadline=None)
@given(st.lists(TOKENS | st.text(max_size=6), min_size=1, max_size=12))
def test_kinds_of_a_column_agree_with_value_type_of_each_field(texts):
    stripped = values.strip(pa.array(texts, pa.string()))
    found = values.classify(stripped)
    expected = [value_type(t) for t in texts]
    assert found.kinds.missing == expected.count(None)
    for kind in ("bool", "int", "float", "string"):
        assert getattr(found.kinds, kind) == expected.count(kind), kind


@settings(max_examples=200, deadline=None)
@given(st.lists(TOKENS, min_size=1, max_size=12))
def test_typed_columns_hold_what_parse_value_gives(texts):
    stripped = values.strip(pa.array(texts, pa.string()))
    column_type = values.classify(stripped).kinds.value_type or "string"
    try:
        typed = values.typed(stripped, column_type, "data.csv column 'c'", 1).to_pylist()
    except values.ValueMismatch:  # only an integer beyond int64
        assert column_type == "int" and any(len(t.strip().lstrip("+-")) > 18 for t in texts)
        return
    assert typed == [parse_value(t, column_type) for t in texts]


def test_a_value_of_the_wrong_type_names_the_row():
    column = values.strip(pa.array(["1", "2", "x"], pa.string()))
    with pytest.raises(values.ValueMismatch, match=r"^d\.csv column 'n' row 12: value 'x' is not a int$"):
        values.typed(column, "int", "d.csv column 'n'", 10)


# --- formats ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["csv", "gz", "parquet", "jsonl"])
def test_every_format_profiles_to_the_same_types_and_counts(tmp_path, name):
    profile = profile_source(write_all_formats(tmp_path)[name])
    assert profile.rows == 3 and profile.header == ["x", "n", "flag", "city", "label"]
    assert {n: c.type for n, c in profile.columns.items()} == {
        "x": "float", "n": "int", "flag": "bool", "city": "string", "label": "string"}
    assert {n: c.missing for n, c in profile.columns.items()} == {"x": 1, "n": 1, "flag": 0, "city": 1, "label": 0}
    assert profile.columns["x"].mean == pytest.approx(-0.25)


def test_the_format_comes_from_the_suffix_or_the_config(tmp_path):
    assert [source_format(f"s3://b/k/d{s}") for s in (".csv", ".csv.gz", ".parquet", ".pq", ".ndjson")] == [
        "csv", "csv", "parquet", "parquet", "jsonl"]
    assert source_format("data.txt", "csv") == "csv"
    with pytest.raises(DataError, match=r"data\.bin: cannot tell the format .* set data\.format"):
        source_format("data.bin")


def test_a_source_on_object_storage_is_read_in_place(s3, tmp_path):
    import fsspec

    local = write_all_formats(tmp_path)
    for name in ("csv", "parquet"):
        url = s3.url("data", f"d.{'parquet' if name == 'parquet' else 'csv'}")
        with open(local[name], "rb") as src, fsspec.open(url, "wb") as dst:
            dst.write(src.read())
        profile = profile_source(url)
        assert profile.rows == 3 and profile.columns["n"].type == "int"


def test_batches_number_their_rows_and_progress_is_logged(tmp_path, monkeypatch, caplog):
    import tasks.data.readers as readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 64)
    monkeypatch.setattr(readers, "PROGRESS_SECONDS", 0.0)
    path = tmp_path / "d.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(100)))
    with caplog.at_level("INFO", logger="tasks.data.readers"), Reader(str(path), step="ingest") as reader:
        batches = list(reader)
    assert len(batches) > 3
    assert [b.first_row for b in batches] == [1 + sum(b.num_rows for b in batches[:i]) for i in range(len(batches))]
    assert reader.rows == 100 and reader.bytes_read == path.stat().st_size
    assert any("ingest: done, 100 rows" in r.message and "rows/s" in r.message for r in caplog.records)


# --- bad input: one line naming the file (and the row) ----------------------------------------------


def assert_one_line(exc: pytest.ExceptionInfo, path) -> None:
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_a_ragged_row_after_the_first_block_names_its_line(tmp_path, monkeypatch):
    import tasks.data.readers as readers

    monkeypatch.setattr(readers, "BLOCK_BYTES", 256)
    path = tmp_path / "d.csv"
    path.write_text('a,b\n"x\ny",1\n' + "1,2\n" * 300 + "3\n")
    with pytest.raises(CsvError, match=r"d\.csv line 304: 1 fields, the header has 2$") as exc:
        profile_source(str(path))
    assert_one_line(exc, path)


def test_a_truncated_parquet_file(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"d\.parquet: not a readable Parquet file") as exc:
        profile_source(str(path))
    assert_one_line(exc, path)


def test_a_parquet_file_named_csv_is_not_text(tmp_path):
    path = tmp_path / "d.csv"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    with pytest.raises(DataError, match=r"not UTF-8 text \(is it a CSV\? set data\.format\)") as exc:
        profile_source(str(path))
    assert_one_line(exc, path)
    assert profile_source(str(path), "parquet").rows == 3


def test_a_json_line_that_is_not_json(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"d\.jsonl: JSON parse error") as exc:
        profile_source(str(path))
    assert_one_line(exc, path)


def test_a_nested_column_is_refused_by_name(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"v": [[1, 2], [3]], "label": ["a", "b"]}), path)
    with pytest.raises(DataError, match=r"column 'v' holds list<element: int64> values"):
        profile_source(str(path))


@pytest.mark.parametrize("fmt, write", [
    ("parquet", lambda p: pq.write_table(pa.table({"a": pa.array([], pa.int64())}), p)),
    ("jsonl", lambda p: p.write_text("")),
])
def test_an_empty_source(tmp_path, fmt, write):
    path = tmp_path / f"d.{fmt}"
    write(path)
    with pytest.raises(DataError, match=r"has no rows$|empty") as exc:
        profile_source(str(path))
    assert_one_line(exc, path)


# --- TFRecord of tf.train.Example --------------------------------------------------------------------


def write_tfrecord(path, rows: list[dict], gzip_records: bool = False) -> None:
    import tensorflow as tf

    def feature(value):
        if isinstance(value, bool | int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
        if isinstance(value, float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))

    with tf.io.TFRecordWriter(str(path), options="GZIP" if gzip_records else None) as writer:
        for row in rows:
            features = {k: feature(v) for k, v in row.items() if v is not None}
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


@pytest.mark.parametrize("name", ["d.tfrecord", "d.tfrecord.gz"])
def test_tfrecord_examples_read_as_typed_columns_with_absent_features_missing(tmp_path, name):
    path = tmp_path / name
    write_tfrecord(path, ROWS, gzip_records=name.endswith(".gz"))
    profile = profile_source(str(path))
    assert profile.rows == 3 and set(profile.header) == {"x", "n", "flag", "city", "label"}
    assert {n: c.type for n, c in profile.columns.items()} == {
        "x": "float", "n": "int", "flag": "int", "city": "string", "label": "string"}  # a bool is an int64 feature
    assert {n: c.missing for n, c in profile.columns.items()} == {"x": 1, "n": 1, "flag": 0, "city": 1, "label": 0}


def test_a_truncated_tfrecord_file(tmp_path):
    path = tmp_path / "d.tfrecord"
    write_tfrecord(path, ROWS * 10)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match=r"d\.tfrecord: truncated or corrupt TFRecord file") as exc:
        profile_source(str(path))
    assert_one_line(exc, path)


def test_a_tfrecord_feature_with_several_values_is_refused_by_record(tmp_path):
    import tensorflow as tf

    path = tmp_path / "d.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for values_ in ([1.0], [2.0], [3.0, 4.0]):
            feature = {"v": tf.train.Feature(float_list=tf.train.FloatList(value=values_))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    with pytest.raises(DataError, match=r"d\.tfrecord record 3: feature 'v' has several values") as exc:
        profile_source(str(path))
    assert_one_line(exc, path)


# --- a folder or a glob of files ---------------------------------------------------------------------


def test_a_folder_of_parquet_files_reads_as_one_source_without_its_markers(tmp_path):
    folder = tmp_path / "table"
    folder.mkdir()
    for part in range(3):
        pq.write_table(pa.Table.from_pylist(ROWS), folder / f"part-{part:05d}.parquet")
    (folder / "_SUCCESS").write_text("")
    one = profile_source(str(folder / "part-00000.parquet"))
    profile = profile_source(str(folder))
    assert profile.rows == 9 and profile.columns["x"].missing == 3 and profile.source == str(folder)
    assert profile.sha256 != one.sha256 and profile.bytes == 3 * one.bytes
    assert profile_source(str(folder / "part-*.parquet")).sha256 == profile.sha256


def test_files_of_one_source_must_have_the_same_columns(tmp_path):
    (tmp_path / "a.csv").write_text(CSV)
    (tmp_path / "b.csv").write_text("x,n\n1,2\n")
    with pytest.raises(DataError, match=r"b\.csv: columns \(columns: x, n\) differ from those of .*a\.csv") as exc:
        profile_source(str(tmp_path / "*.csv"))
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match=r"nothing-\*\.csv: no data files there"):
        profile_source(str(tmp_path / "nothing-*.csv"))
