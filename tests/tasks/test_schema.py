"""Schemas in TFDV's format: inference from column summaries (types, presence, domains), the value
type a feature declares, a feature's domain values, reading and writing schema files."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from tasks.schema import (
    MAX_DOMAIN_SIZE,
    ColumnSummary,
    SchemaError,
    domain_values,
    feature_map,
    infer_schema,
    load_schema,
    value_type,
    write_schema_file,
)


def column(name: str = "c", kind: str | None = "string", present: int = 10, total: int = 10,
           values: list | None = None) -> ColumnSummary:
    return ColumnSummary(name=name, type=kind, present=present, total=total, distinct_values=values)


def inferred(summary: ColumnSummary, label: str | None = None, with_domains: bool = True,
             **kwargs) -> schema_pb2.Feature:
    schema = infer_schema([summary], label=label, with_domains=with_domains, **kwargs)
    assert len(schema.feature) == 1
    return schema.feature[0]


def feature(text: str) -> schema_pb2.Feature:
    return text_format.Parse(text, schema_pb2.Feature())


# --- infer_schema --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, enum", [
    ("float", schema_pb2.FLOAT), ("int", schema_pb2.INT), ("string", schema_pb2.BYTES), ("bool", schema_pb2.INT),
    (None, schema_pb2.TYPE_UNKNOWN),
])
def test_types(kind, enum):
    assert inferred(column(kind=kind)).type == enum


def test_bool_is_int_with_a_bool_domain():
    result = inferred(column(kind="bool", values=[False, True]))
    assert result.HasField("bool_domain")
    assert not result.HasField("int_domain")


def test_features_keep_the_columns_order():
    schema = infer_schema([column("b"), column("a"), column("c")], label=None, with_domains=False)
    assert [f.name for f in schema.feature] == ["b", "a", "c"]


def test_every_feature_has_exactly_one_value():
    result = inferred(column(kind="float"))
    assert (result.value_count.min, result.value_count.max) == (1, 1)


def test_an_always_present_column_is_required():
    result = inferred(column(kind="int", present=10, total=10))
    assert result.presence.min_fraction == 1.0
    assert result.presence.min_count == 1


def test_a_sometimes_missing_column_is_only_seen_at_least_once():
    result = inferred(column(kind="int", present=9, total=10))
    assert result.presence.min_fraction == 0.0
    assert result.presence.min_count == 1


def test_a_never_present_column_has_no_presence_minimum():
    result = inferred(column(kind=None, present=0, total=10))
    assert (result.presence.min_fraction, result.presence.min_count) == (0.0, 0)


def test_string_domain_with_domains():
    result = inferred(column(values=["a", "b", "c"]))
    assert result.string_domain.name == "c"
    assert list(result.string_domain.value) == ["a", "b", "c"]


def test_no_string_domain_without_domains():
    assert not inferred(column(values=["a", "b"]), with_domains=False).HasField("string_domain")


def test_string_domain_up_to_the_maximum_size():
    values = [f"v{i:03d}" for i in range(MAX_DOMAIN_SIZE)]
    assert len(inferred(column(values=values)).string_domain.value) == MAX_DOMAIN_SIZE


def test_no_string_domain_beyond_the_maximum_size():
    assert not inferred(column(values=["a", "b", "c"]), max_domain_size=2).HasField("string_domain")


def test_no_string_domain_when_the_values_are_unknown():
    assert not inferred(column(values=None)).HasField("string_domain")


def test_no_domain_for_non_label_numbers():
    result = inferred(column(kind="int", values=[1, 2, 3]))
    assert not result.HasField("int_domain")
    assert not result.HasField("string_domain")


@pytest.mark.parametrize("with_domains", [True, False])
def test_a_string_label_always_gets_a_string_domain(with_domains):
    values = [f"class{i:03d}" for i in range(MAX_DOMAIN_SIZE + 5)]
    result = inferred(column("y", values=values), label="y", with_domains=with_domains)
    assert list(result.string_domain.value) == values


@pytest.mark.parametrize("with_domains", [True, False])
def test_an_int_label_gets_an_int_domain_of_its_range(with_domains):
    result = inferred(column("y", kind="int", values=[-1, 0, 4]), label="y", with_domains=with_domains)
    assert (result.int_domain.min, result.int_domain.max) == (-1, 4)


# --- value_type and domain_values of schema features ---------------------------------------------


@pytest.mark.parametrize("text, kind", [
    ("name: 'f' type: FLOAT", "float"),
    ("name: 'f' type: INT", "int"),
    ("name: 'f' type: INT int_domain { is_categorical: true }", "int"),
    ("name: 'f' type: INT bool_domain {}", "bool"),
    ("name: 'f' type: BYTES", "string"),
    ("name: 'f'", None),
])
def test_value_type_of_a_schema_feature(text, kind):
    assert value_type(feature(text)) == kind


@pytest.mark.parametrize("kind", ["float", "int", "string", "bool"])
def test_value_type_round_trips_through_inference(kind):
    assert value_type(inferred(column(kind=kind))) == kind


@pytest.mark.parametrize("text, values", [
    ("type: BYTES string_domain { value: 'x' value: 'y' }", ["x", "y"]),
    ("type: INT bool_domain {}", [False, True]),
    ("type: INT int_domain { min: 2 max: 5 }", [2, 3, 4, 5]),
])
def test_domain_values(text, values):
    assert domain_values(feature(text)) == values


@pytest.mark.parametrize("text", [
    "type: FLOAT",
    "type: BYTES string_domain { }",
    "type: INT int_domain { min: 2 }",
    "type: INT int_domain { is_categorical: true }",
    "type: INT int_domain { min: 0 max: 100000 }",
])
def test_no_domain_values(text):
    assert domain_values(feature(text)) is None


# --- reading and writing -------------------------------------------------------------------------


def test_load_schema_of_a_missing_file(tmp_path):
    path = tmp_path / "absent.pbtxt"
    with pytest.raises(SchemaError, match="schema not found") as exc:
        load_schema(str(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("text", ["hello world\n", "feature {\n  name: 'a'\n", "feature { type: NOT_A_TYPE }\n"])
def test_load_schema_of_a_file_that_is_not_a_text_proto(tmp_path, text):
    path = tmp_path / "bad.pbtxt"
    path.write_text(text)
    with pytest.raises(SchemaError, match="not a Schema text proto") as exc:
        load_schema(str(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("kind", ["folder", "binary"])
def test_load_schema_of_an_unreadable_path(tmp_path, kind):
    path = tmp_path / "schema.pbtxt"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SchemaError) as exc:
        load_schema(str(path))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_write_schema_file_round_trips(tmp_path):
    schema = infer_schema([column("city", values=["Oslo", "Rome"]), column("age", kind="int", present=3, total=4),
                           column("member", kind="bool"), column("y", kind="int", values=[0, 1])],
                          label="y", with_domains=True)
    path = tmp_path / "nested" / "folder" / "s.schema.pbtxt"
    write_schema_file(path, schema, comment="first line\nsecond line")
    assert path.read_text().startswith("# first line\n# second line\n")
    assert load_schema(str(path)) == schema
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.schema.pbtxt"]


def test_write_schema_file_replaces_an_existing_file(tmp_path):
    path = tmp_path / "s.pbtxt"
    write_schema_file(path, infer_schema([column("a")], label=None, with_domains=False))
    replacement = infer_schema([column("b", kind="float")], label=None, with_domains=False)
    write_schema_file(path, replacement)
    assert list(feature_map(load_schema(str(path)))) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["s.pbtxt"]
