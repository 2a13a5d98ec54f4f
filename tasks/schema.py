"""Schemas in TFDV's format (tensorflow-metadata `Schema` text protos): inference, reading, writing.

`kiln init` infers a schema from a whole CSV (with domains: the user curates it), the pipeline's
SchemaGen infers one from the train split when no curated file is given (types, presence and value
counts only, TFDV's defaults: a rare category missing from train would otherwise fail the eval
split). Types: FLOAT, INT, BYTES; booleans are INT with a `bool_domain`, categorical integers INT
with `int_domain { is_categorical: true }`, images BYTES with an `image_domain` (TFDV's conventions).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from tasks.columns import ValueType, holds
from tasks.errors import BadInputError

MAX_DOMAIN_SIZE = 100  # TFDV's default max_string_domain_size


class SchemaError(BadInputError):
    """A schema file that cannot be read or does not fit the data; one line naming it."""


@dataclass(frozen=True)
class ColumnSummary:
    """What schema inference needs to know of one column."""

    name: str
    type: ValueType | None
    present: int
    total: int
    distinct_values: list[Any] | None = None  # typed and sorted; None when unknown or too many


def value_type(feature: schema_pb2.Feature) -> ValueType | None:
    """The value type a schema feature declares (None for TYPE_UNKNOWN)."""
    if feature.type == schema_pb2.FLOAT:
        return "float"
    if feature.type == schema_pb2.INT:
        return "bool" if feature.HasField("bool_domain") else "int"
    if feature.type == schema_pb2.BYTES:
        return "image" if feature.HasField("image_domain") else "string"
    return None


_TYPE_ENUM = {"float": schema_pb2.FLOAT, "int": schema_pb2.INT, "bool": schema_pb2.INT, "string": schema_pb2.BYTES,
              "image": schema_pb2.BYTES}


def infer_schema(columns: Iterable[ColumnSummary], label: str | None, with_domains: bool,
                 max_domain_size: int = MAX_DOMAIN_SIZE) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    for column in columns:
        feature = schema.feature.add(name=column.name, type=_TYPE_ENUM.get(column.type, schema_pb2.TYPE_UNKNOWN))
        # TFDV's rule: required when always present, otherwise only "seen at least once".
        feature.presence.min_fraction = 1.0 if column.total and column.present == column.total else 0.0
        feature.presence.min_count = 1 if column.present else 0
        feature.value_count.min = 1
        feature.value_count.max = 1
        values = column.distinct_values
        if column.type == "bool":
            feature.bool_domain.SetInParent()
        elif column.type == "image":
            feature.image_domain.SetInParent()
        elif column.name == label and column.type == "int" and values:
            feature.int_domain.min, feature.int_domain.max = int(values[0]), int(values[-1])
        elif column.type == "string" and values is not None and (
                column.name == label or (with_domains and len(values) <= max_domain_size)):
            feature.string_domain.name = column.name
            feature.string_domain.value.extend(str(v) for v in values)
    return schema


def load_schema(uri: str) -> schema_pb2.Schema:
    try:
        with fsspec.open(uri, "r") as fh:
            return text_format.Parse(fh.read(), schema_pb2.Schema())
    except FileNotFoundError:
        raise SchemaError(f"schema not found: {uri}") from None
    except IsADirectoryError:
        raise SchemaError(f"schema path is a folder, not a file: {uri}") from None
    except UnicodeDecodeError:
        raise SchemaError(f"{uri}: not a Schema text proto (not UTF-8 text)") from None
    except text_format.ParseError as exc:
        raise SchemaError(f"{uri}: not a Schema text proto ({exc})") from None


def schema_text(schema: schema_pb2.Schema, comment: str = "") -> str:
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return header + text_format.MessageToString(schema)


def write_schema_file(path: Path, schema: schema_pb2.Schema, comment: str = "") -> None:
    """Atomic: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(schema_text(schema, comment))
    os.replace(tmp, path)


def feature_map(schema: schema_pb2.Schema) -> dict[str, schema_pb2.Feature]:
    return {f.name: f for f in schema.feature}


def domain_values(feature: schema_pb2.Feature) -> list[Any] | None:
    """The values a categorical feature may take, when the schema lists them."""
    if feature.HasField("string_domain") and feature.string_domain.value:
        return list(feature.string_domain.value)
    if feature.HasField("bool_domain"):
        return [False, True]
    domain = feature.int_domain
    if feature.HasField("int_domain") and domain.HasField("min") and domain.HasField("max") \
            and domain.max - domain.min < 10_000:
        return list(range(domain.min, domain.max + 1))
    return None


def column_types(profile: Any, schema_path: str | None) -> dict[str, ValueType]:
    """Each column's storage type: the data's own, or the curated schema's where every value fits it."""
    declared = feature_map(load_schema(schema_path)) if schema_path else {}
    types: dict[str, ValueType] = {}
    for name, column in profile.columns.items():
        seen = column.type
        wanted = value_type(declared[name]) if name in declared else None
        if wanted is not None and (seen is None or holds(wanted, seen)):
            types[name] = wanted
        else:
            types[name] = seen or "string"
    return types
