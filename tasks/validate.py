"""Validate: statistics, schema and anomalies in TFDV's formats (TFDV itself cannot be installed).

Statistics are computed per split; the schema is the curated one (`data.schema_path`) or is
inferred from the train split; every split is checked against it. Any anomaly stops the run:
the three artifacts are published first (so the UI can show why), then `DataValidationError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from tasks import ingest
from tasks.artifacts import StepContext, publish_artifact, read_artifact
from tasks.config import PipelineConfig
from tasks.errors import BadInputError

log = logging.getLogger(__name__)

SCHEMA_FILE = "schema.pbtxt"
STATS_FILE = "FeatureStats.pbtxt"
ANOMALIES_FILE = "SchemaDiff.pbtxt"
MAX_ERRORS_IN_MESSAGE = 4


class DataValidationError(BadInputError):
    """The examples do not match the schema; one line naming the columns at fault."""


@dataclass
class _Column:
    """Everything seen of one feature in one split."""

    kinds: set[str] = field(default_factory=set)
    present: int = 0
    values: list[float] = field(default_factory=list)
    min_count: int = 1 << 62
    max_count: int = 0


@dataclass
class _Split:
    num_examples: int = 0
    columns: dict[str, _Column] = field(default_factory=dict)


def run(config: PipelineConfig, ctx: StepContext, examples: str) -> dict[str, str]:
    properties = read_artifact(examples, ingest.KIND).properties
    splits = {name: _scan(ingest.iter_examples(examples, name), properties["columns"]) for name in ingest.SPLITS}
    if config.data.schema_path:
        schema = load_schema(config.data.schema_path)
        schema_origin = config.data.schema_path
    else:
        schema = _infer(splits["train"], properties["label_column"])
        schema_origin = "inferred from the train split"

    stats_uri = ctx.output_uri("validate", "statistics")
    with publish_artifact(stats_uri, "ExampleStatistics", {"num_examples": {}}) as staging:
        for name, split in splits.items():
            _write_text(staging / f"Split-{name}" / STATS_FILE, _statistics(name, split))
    schema_uri = ctx.output_uri("validate", "schema")
    with publish_artifact(schema_uri, "Schema", {"origin": schema_origin, "num_features": len(schema.feature)}) as staging:
        _write_text(staging / SCHEMA_FILE, schema)

    found = {name: _anomalies(schema, split) for name, split in splits.items()}
    position = {f.name: i for i, f in enumerate(schema.feature)}  # proto maps have no stable order

    def in_schema_order(anomalies: anomalies_pb2.Anomalies) -> list[str]:
        names = sorted(anomalies.anomaly_info, key=lambda n: (position.get(n, len(position)), n))
        return [anomalies.anomaly_info[n].description for n in names]

    problems = _unique(d for a in found.values() for d in in_schema_order(a))
    anomalies_uri = ctx.output_uri("validate", "anomalies")
    props = {"num_anomalies": len(problems), "by_split": {n: sorted(a.anomaly_info) for n, a in found.items()}}
    with publish_artifact(anomalies_uri, "ExampleAnomalies", props) as staging:
        for name, anomalies in found.items():
            _write_text(staging / f"Split-{name}" / ANOMALIES_FILE, anomalies)
    if problems:
        shown = "; ".join(problems[:MAX_ERRORS_IN_MESSAGE])
        more = f"; and {len(problems) - MAX_ERRORS_IN_MESSAGE} more" if len(problems) > MAX_ERRORS_IN_MESSAGE else ""
        raise DataValidationError(f"{len(problems)} data anomalies (schema: {schema_origin}; see {anomalies_uri}): {shown}{more}")
    log.info("validate: %s matches the schema (%s): %s", examples, schema_origin,
             ", ".join(f"{n} {s.num_examples} examples" for n, s in splits.items()))
    return {"statistics": stats_uri, "schema": schema_uri, "anomalies": anomalies_uri}


def infer_schema(examples_uri: str) -> schema_pb2.Schema:
    """A schema that the train split of `examples_uri` satisfies (TFDV's `infer_schema`, simplified)."""
    properties = read_artifact(examples_uri, ingest.KIND).properties
    return _infer(_scan(ingest.iter_examples(examples_uri, "train"), properties["columns"]), properties["label_column"])


def load_schema(uri: str) -> schema_pb2.Schema:
    try:
        with fsspec.open(uri, "r") as fh:
            return text_format.Parse(fh.read(), schema_pb2.Schema())
    except FileNotFoundError:
        raise DataValidationError(f"schema not found: {uri}") from None
    except text_format.ParseError as exc:
        raise DataValidationError(f"{uri}: not a Schema text proto ({exc})") from None


def read_schema(schema_artifact_uri: str) -> schema_pb2.Schema:
    """The schema published by this step."""
    return load_schema(read_artifact(schema_artifact_uri, "Schema").path(SCHEMA_FILE))


def _scan(examples: Iterable[Any], column_order: list[str]) -> _Split:
    """Per-feature counts and values; features are kept in the CSV's column order (protos have none)."""
    split = _Split(columns={name: _Column() for name in column_order})
    for example in examples:
        split.num_examples += 1
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            values = list(getattr(feature, kind).value) if kind else []
            column = split.columns.setdefault(name, _Column())
            column.kinds.add(kind or "none")
            column.min_count = min(column.min_count, len(values))
            column.max_count = max(column.max_count, len(values))
            if values:
                column.present += 1
                column.values.extend(float(v) for v in values if not isinstance(v, bytes))
    # A column named by ingest but absent from every example is not data.
    split.columns = {name: c for name, c in split.columns.items() if c.kinds}
    return split


_TYPE_OF_KIND = {"float_list": schema_pb2.FLOAT, "int64_list": schema_pb2.INT, "bytes_list": schema_pb2.BYTES}
_STATS_TYPE = {
    schema_pb2.FLOAT: statistics_pb2.FeatureNameStatistics.FLOAT,
    schema_pb2.INT: statistics_pb2.FeatureNameStatistics.INT,
    schema_pb2.BYTES: statistics_pb2.FeatureNameStatistics.STRING,
}


def _data_type(column: _Column) -> int | None:
    kinds = column.kinds - {"none"}
    return _TYPE_OF_KIND[kinds.pop()] if len(kinds) == 1 else None


def _statistics(name: str, split: _Split) -> statistics_pb2.DatasetFeatureStatisticsList:
    dataset = statistics_pb2.DatasetFeatureStatistics(name=name, num_examples=split.num_examples)
    for feature_name, column in split.columns.items():
        feature = dataset.features.add()
        feature.path.step.append(feature_name)
        feature.type = _STATS_TYPE.get(_data_type(column), statistics_pb2.FeatureNameStatistics.FLOAT)
        values = np.asarray(column.values, dtype=np.float64)
        common = statistics_pb2.CommonStatistics(
            num_non_missing=column.present,
            num_missing=split.num_examples - column.present,
            min_num_values=column.min_count,
            max_num_values=column.max_count,
            avg_num_values=len(values) / max(column.present, 1),
            tot_num_values=len(values),
        )
        if len(values):
            feature.num_stats.CopyFrom(statistics_pb2.NumericStatistics(
                common_stats=common, mean=values.mean(), std_dev=values.std(), min=values.min(),
                max=values.max(), median=float(np.median(values)), num_zeros=int((values == 0).sum()),
            ))
        else:
            feature.num_stats.common_stats.CopyFrom(common)
    return statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])


def _infer(split: _Split, label_column: str) -> schema_pb2.Schema:
    schema = schema_pb2.Schema()
    for name, column in split.columns.items():
        feature = schema.feature.add(name=name, type=_data_type(column) or schema_pb2.TYPE_UNKNOWN)
        feature.presence.min_fraction = column.present / max(split.num_examples, 1)
        feature.presence.min_count = 1
        feature.value_count.min = column.min_count
        feature.value_count.max = column.max_count
        if name == label_column and feature.type == schema_pb2.INT and column.values:
            feature.int_domain.min = int(min(column.values))
            feature.int_domain.max = int(max(column.values))
    return schema


def _anomalies(schema: schema_pb2.Schema, split: _Split) -> anomalies_pb2.Anomalies:
    anomalies = anomalies_pb2.Anomalies(
        baseline=schema, anomaly_name_format=anomalies_pb2.Anomalies.SERIALIZED_PATH,
        data_missing=split.num_examples == 0,
    )

    def add(name: str, kind: int, short: str, description: str) -> None:
        info = anomalies.anomaly_info[name]
        info.path.step[:] = [name]
        info.severity = anomalies_pb2.AnomalyInfo.ERROR
        info.reason.add(type=kind, short_description=short, description=description)
        info.short_description = info.reason[0].short_description if len(info.reason) == 1 else "Multiple errors"
        info.description = " and ".join(r.description for r in info.reason)

    A = anomalies_pb2.AnomalyInfo
    expected = {f.name for f in schema.feature}
    for feature in schema.feature:
        column = split.columns.get(feature.name)
        if column is None or column.present == 0:
            if feature.presence.min_count > 0 or feature.presence.min_fraction > 0:
                add(feature.name, A.SCHEMA_MISSING_COLUMN, "Column dropped",
                    f"column {feature.name!r} is required by the schema but missing from the data")
            continue
        data_type = _data_type(column)
        if data_type != feature.type:
            add(feature.name, A.UNEXPECTED_DATA_TYPE, "Unexpected data type",
                f"column {feature.name!r} has type {_type_name(data_type)}, the schema expects "
                f"{schema_pb2.FeatureType.Name(feature.type)}")
            continue
        fraction = column.present / split.num_examples
        if fraction < feature.presence.min_fraction:
            add(feature.name, A.FEATURE_TYPE_LOW_FRACTION_PRESENT, "Column missing in some examples",
                f"column {feature.name!r} is present in {fraction:.1%} of examples, the schema requires "
                f"{feature.presence.min_fraction:.1%}")
        if feature.HasField("value_count"):
            if column.min_count < feature.value_count.min:
                add(feature.name, A.FEATURE_TYPE_LOW_NUMBER_VALUES, "Too few values",
                    f"column {feature.name!r} has {column.min_count} values in some example, "
                    f"the schema requires at least {feature.value_count.min}")
            if feature.value_count.max and column.max_count > feature.value_count.max:
                add(feature.name, A.FEATURE_TYPE_HIGH_NUMBER_VALUES, "Too many values",
                    f"column {feature.name!r} has {column.max_count} values in some example, "
                    f"the schema allows at most {feature.value_count.max}")
        if feature.HasField("int_domain") and column.values:
            low, high = min(column.values), max(column.values)
            domain = feature.int_domain
            if domain.HasField("min") and low < domain.min:
                add(feature.name, A.INT_TYPE_SMALL_INT, "Out-of-range values",
                    f"column {feature.name!r} has value {int(low)} below the schema's minimum {domain.min}")
            if domain.HasField("max") and high > domain.max:
                add(feature.name, A.INT_TYPE_BIG_INT, "Out-of-range values",
                    f"column {feature.name!r} has value {int(high)} above the schema's maximum {domain.max}")
    for name in split.columns:
        if name not in expected:
            add(name, A.SCHEMA_NEW_COLUMN, "New column",
                f"column {name!r} is in the data but not in the schema")
    return anomalies


def _type_name(data_type: int | None) -> str:
    return schema_pb2.FeatureType.Name(data_type) if data_type is not None else "mixed"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _write_text(path: Any, message: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(message))
