"""The model's inputs: served names, which served feature each column becomes (from the schema and the
transform settings), and how a CSV row or served-input arrays become REST instances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from tasks.features import (
    MISSING_INT,
    FeatureError,
    FeatureSpec,
    LabelSpec,
    instance_from_row,
    json_instances,
    plan_features,
    served_name,
)

SCHEMA_TYPES = {
    "float": "type: FLOAT",
    "int": "type: INT",
    "code": "type: INT int_domain { is_categorical: true }",
    "bool": "type: INT bool_domain {}",
    "string": "type: BYTES",
}
STORAGE = {"float": "float", "int": "int", "code": "int", "bool": "bool", "string": "string"}


def schema_of(columns: dict[str, str]) -> schema_pb2.Schema:
    """A schema whose features have the SCHEMA_TYPES named by `columns` (column -> key)."""
    text = "".join(f"feature {{ name: {name!r} {SCHEMA_TYPES[kind]} }}\n" for name, kind in columns.items())
    return text_format.Parse(text, schema_pb2.Schema())


def plan(columns: dict[str, str], label: str = "y", feature_groups: dict | None = None,
         discretize: dict | None = None) -> list[FeatureSpec]:
    """plan_features for columns (in CSV order) declared in the schema as `columns` says."""
    return plan_features(schema_of(columns), {name: STORAGE[kind] for name, kind in columns.items()}, label,
                         feature_groups or {}, discretize or {})


def one_line(exc: pytest.ExceptionInfo[FeatureError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- served_name ---------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["age", "Age_2", "x.y-z", "a1"])
def test_a_valid_signature_key_is_kept(column):
    assert served_name(column) == column


@pytest.mark.parametrize("column, name", [
    ("monthly fee", "monthly_fee"),
    ("size (m2)", "size__m2_"),
    ("é", "f__"),
    ("1st", "f_1st"),
    ("_private", "f__private"),
    ("-x", "f_-x"),
])
def test_other_names_are_cleaned(column, name):
    assert served_name(column) == name


# --- plan_features: kinds ------------------------------------------------------------------------


@pytest.mark.parametrize("kind, feature_kind", [
    ("float", "numeric"), ("int", "numeric"), ("code", "integer"), ("bool", "boolean"), ("string", "string"),
])
def test_kind_comes_from_the_schema(kind, feature_kind):
    (spec,) = plan({"x": kind, "y": "string"})
    assert spec.kind == feature_kind
    assert spec.columns == ["x"]
    assert spec.column_types == [STORAGE[kind]]


def test_features_follow_the_csv_order_without_the_label():
    specs = plan({"b": "float", "y": "string", "a": "string", "c": "bool"})
    assert [s.name for s in specs] == ["b", "a", "c"]


def test_columns_missing_from_the_schema_are_left_out():
    schema = schema_of({"a": "float", "y": "string"})
    specs = plan_features(schema, {"a": "float", "extra": "float", "y": "string"}, "y", {}, {})
    assert [s.name for s in specs] == ["a"]


def test_feature_names_are_served_names():
    (spec,) = plan({"monthly fee": "float", "y": "string"})
    assert spec.name == "monthly_fee"
    assert spec.columns == ["monthly fee"]


def test_a_column_without_a_type_in_the_schema():
    schema = text_format.Parse("feature { name: 'x' } feature { name: 'y' type: BYTES }", schema_pb2.Schema())
    with pytest.raises(FeatureError, match="'x' has no type") as exc:
        plan_features(schema, {"x": "float", "y": "string"}, "y", {}, {})
    one_line(exc)


# --- plan_features: feature groups ---------------------------------------------------------------


def test_a_group_is_one_vector_feature_in_csv_order_at_its_first_column():
    columns = {"id": "string", "p_2": "float", "mid": "bool", "p_0": "int", "p_1": "float", "y": "string"}
    specs = plan(columns, feature_groups={"pixels": ["p_*"]})
    assert [s.name for s in specs] == ["id", "pixels", "mid"]
    vector = specs[1]
    assert vector.kind == "vector"
    assert vector.columns == ["p_2", "p_0", "p_1"]
    assert vector.column_types == ["float", "int", "float"]


def test_a_group_takes_several_patterns_and_plain_names():
    specs = plan({"a": "float", "b": "float", "c1": "float", "c2": "float", "y": "string"},
                 feature_groups={"v": ["a", "c?"]})
    assert [(s.name, s.columns) for s in specs] == [("v", ["a", "c1", "c2"]), ("b", ["b"])]


def test_a_group_pattern_matching_nothing():
    with pytest.raises(FeatureError, match=r"feature_groups\.pixels: 'px_\*' matches no feature column") as exc:
        plan({"a": "float", "y": "string"}, feature_groups={"pixels": ["px_*"]})
    one_line(exc)


def test_a_group_pattern_does_not_match_the_label():
    with pytest.raises(FeatureError, match="'y' matches no feature column"):
        plan({"a": "float", "y": "float"}, feature_groups={"g": ["y"]})


@pytest.mark.parametrize("kind", ["string", "bool", "code"])
def test_a_group_member_that_is_not_numeric(kind):
    with pytest.raises(FeatureError, match=r"feature_groups\.g: column 'b' is not numeric") as exc:
        plan({"a": "float", "b": kind, "y": "string"}, feature_groups={"g": ["a", "b"]})
    one_line(exc)


def test_a_column_in_two_groups():
    with pytest.raises(FeatureError, match="column 'a2' is in feature groups 'g1' and 'g2'") as exc:
        plan({"a1": "float", "a2": "float", "y": "string"}, feature_groups={"g1": ["a*"], "g2": ["a2"]})
    one_line(exc)


# --- plan_features: discretize, names and emptiness ----------------------------------------------


def test_discretize_a_numeric_column():
    specs = plan({"age": "int", "y": "string"}, discretize={"age": 4})
    assert [s.kind for s in specs] == ["numeric"]


@pytest.mark.parametrize("column", ["city", "member", "code", "p0", "absent", "y"])
def test_discretize_a_column_that_is_not_a_numeric_feature(column):
    columns = {"city": "string", "member": "bool", "code": "code", "p0": "float", "p1": "float", "y": "float"}
    with pytest.raises(FeatureError, match=f"transform.discretize: '{column}' is not a numeric feature") as exc:
        plan(columns, feature_groups={"pixels": ["p*"]}, discretize={column: 3})
    one_line(exc)


def test_columns_with_the_same_served_name():
    with pytest.raises(FeatureError, match=r"column 'a b' and column 'a_b' map to the same served feature name 'a_b'") \
            as exc:
        plan({"a b": "float", "a_b": "float", "y": "string"})
    one_line(exc)


def test_a_group_named_like_a_column():
    with pytest.raises(FeatureError, match=r"column 'a' and group 'a' map to the same served feature name 'a'"):
        plan({"a": "float", "b1": "float", "b2": "float", "y": "string"}, feature_groups={"a": ["b*"]})


def test_a_served_name_clash_names_the_columns():
    with pytest.raises(FeatureError) as exc:
        plan({"a b": "float", "a?b": "float", "y": "string"})
    assert "'a b'" in str(exc.value) and "'a?b'" in str(exc.value)


def test_no_features_besides_the_label():
    with pytest.raises(FeatureError, match="no feature columns besides the label 'y'") as exc:
        plan({"y": "string"})
    one_line(exc)


# --- FeatureSpec ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, dtype", [
    ("numeric", "float32"), ("string", "string"), ("integer", "int64"), ("boolean", "bool"),
])
def test_a_single_column_feature_is_a_scalar(kind, dtype):
    spec = FeatureSpec(name="f", kind=kind, columns=["f"], column_types=["float"])
    assert (spec.dtype, spec.shape) == (dtype, [])


def test_a_vector_is_float32_of_its_width():
    spec = FeatureSpec(name="v", kind="vector", columns=["a", "b", "c"], column_types=["float", "int", "float"])
    assert (spec.dtype, spec.shape) == ("float32", [3])


# --- instance_from_row ---------------------------------------------------------------------------

ROW_FEATURES = [
    FeatureSpec(name="age", kind="numeric", columns=["age"], column_types=["int"]),
    FeatureSpec(name="pixels", kind="vector", columns=["p0", "p1", "p2"], column_types=["float"] * 3),
    FeatureSpec(name="city", kind="string", columns=["city"], column_types=["string"]),
    FeatureSpec(name="code", kind="integer", columns=["code"], column_types=["int"]),
    FeatureSpec(name="member", kind="boolean", columns=["member"], column_types=["bool"]),
    FeatureSpec(name="monthly_fee", kind="numeric", columns=["monthly fee"], column_types=["float"]),
]


def row(**values: str) -> dict[str, str]:
    full = {"age": "", "p0": "", "p1": "", "p2": "", "city": "", "code": "", "member": "", "monthly fee": "",
            "label": "yes"}
    return {**full, **values}


def test_an_instance_is_typed_as_the_inputs():
    instance = instance_from_row(row(age="41", p0="0.5", p1="1", p2="-2", city=" Oslo ", code="3",
                                     member="TRUE", **{"monthly fee": "12.5"}), ROW_FEATURES)
    assert instance == {"age": 41.0, "pixels": [0.5, 1.0, -2.0], "city": "Oslo", "code": 3, "member": True,
                        "monthly_fee": 12.5}
    assert type(instance["age"]) is float and type(instance["code"]) is int


def test_a_missing_number_is_nan():
    assert math.isnan(instance_from_row(row(age=""), ROW_FEATURES)["age"])
    assert math.isnan(instance_from_row(row(age="nan"), ROW_FEATURES)["age"])


def test_missing_vector_elements_are_nan():
    pixels = instance_from_row(row(p0="1", p1="", p2="3"), ROW_FEATURES)["pixels"]
    assert pixels[0] == 1.0 and math.isnan(pixels[1]) and pixels[2] == 3.0


def test_a_missing_string_is_empty():
    assert instance_from_row(row(city="  "), ROW_FEATURES)["city"] == ""


def test_a_missing_categorical_int_is_the_missing_marker():
    assert instance_from_row(row(code=""), ROW_FEATURES)["code"] == MISSING_INT


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("", False), ("1", True), ("0", False)])
def test_booleans(text, value):
    assert instance_from_row(row(member=text), ROW_FEATURES)["member"] is value


def test_the_label_and_unused_columns_are_left_out():
    assert set(instance_from_row(row(), ROW_FEATURES)) == {f.name for f in ROW_FEATURES}


# --- json_instances ------------------------------------------------------------------------------


def test_json_instances_are_plain_python_rows():
    inputs = {
        "age": np.array([41.5, 7.0], dtype=np.float32),
        "city": np.array([b"Oslo", "Zürich".encode()], dtype=object),
        "code": np.array([3, MISSING_INT], dtype=np.int64),
        "member": np.array([True, False]),
        "pixels": np.array([[1, 2], [3, 4]], dtype=np.float32),
    }
    instances = json_instances(inputs)
    assert instances == [
        {"age": 41.5, "city": "Oslo", "code": 3, "member": True, "pixels": [1.0, 2.0]},
        {"age": 7.0, "city": "Zürich", "code": MISSING_INT, "member": False, "pixels": [3.0, 4.0]},
    ]
    for instance in instances:
        assert [type(instance[k]) for k in ("age", "city", "code", "member")] == [float, str, int, bool]
        assert all(type(v) is float for v in instance["pixels"])


def test_json_instances_of_fixed_width_bytes():
    assert json_instances({"s": np.array([b"ab", b"c"])}) == [{"s": "ab"}, {"s": "c"}]


def test_json_instances_up_to_a_count():
    inputs = {"x": np.arange(5, dtype=np.float32)}
    assert json_instances(inputs, count=2) == [{"x": 0.0}, {"x": 1.0}]
    assert len(json_instances(inputs, count=50)) == 5


def test_json_instances_of_no_inputs():
    assert json_instances({}) == []


def test_a_streamed_split_gives_every_row_once_per_pass_shuffled_in_windows(tmp_path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import tasks.features as features

    monkeypatch.setattr(features, "READ_BATCH_ROWS", 64)
    monkeypatch.setattr(features, "SHUFFLE_WINDOW", 300)
    files = []
    for part in range(3):
        path = tmp_path / f"part-{part}.parquet"
        pq.write_table(pa.table({"x": [float(part * 1000 + i) for i in range(500)], "y": [1.0] * 500}), path,
                       row_group_size=100)
        files.append(str(path))
    spec = [FeatureSpec(name="x", kind="numeric", columns=["x"], column_types=["float"])]
    label = LabelSpec(column="y", value_type="float", task="regression")

    def one_pass(seed):
        data = features.dataset(files, spec, label, batch_size=32, shuffle_seed=seed, repeat=True, memory_budget=0)
        return [inputs["x"].numpy().tolist() for inputs, _ in data.take(48)]  # a pass: 3 x (15 x 32 + 20) rows

    first, again = one_pass(7), one_pass(7)
    rows = [x for batch in first for x in batch]
    assert sorted(rows[:1500]) == sorted(float(p * 1000 + i) for p in range(3) for i in range(500))
    assert rows[:1500] != sorted(rows[:1500]), "shuffled"
    assert first == again, "the seed decides the order"
    assert sorted(len(b) for b in first) == [20] * 3 + [32] * 45, "whole batches, but for each file's last"


def test_the_first_row_of_any_source_is_an_instance(tmp_path):
    """`kiln run` predicts the source's first row: a Parquet file's typed values and an image's pixels too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.data.partitions import first_row
    from tests.images import write_image_folder

    pq.write_table(pa.table({"age": [41, 7], "city": ["Oslo", None], "member": [True, False]}), tmp_path / "t.parquet")
    parquet = first_row(str(tmp_path / "t.parquet"), None)
    assert parquet == {"age": "41", "city": "Oslo", "member": "true"}
    assert instance_from_row({**row(), **parquet}, ROW_FEATURES)["member"] is True

    folder = write_image_folder(tmp_path / "images", per_class=1, size=(4, 6))
    image = first_row(str(folder), None, (2, 3, 1))
    assert image["label"] == "horizontal" and len(image["image"]) == 6
    spec = FeatureSpec(name="image", kind="image", columns=["image"], column_types=["image"], image_shape=[2, 3, 1])
    pixels = instance_from_row(image, [spec])["image"]
    assert len(pixels) == 2 and len(pixels[0]) == 3 and pixels[0][0] == [float(image["image"][0])]
