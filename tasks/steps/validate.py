"""Validate: StatisticsGen, SchemaGen and ExampleValidator in TFDV's formats (TFDV cannot be installed).

Statistics are computed per split in one streamed pass over its Parquet shards, in bounded memory:
exact counts, moments and ranges, and DataSketches' KLL quantiles, frequent items and HLL distinct
counts beyond that (`tasks.data.sketches`). The schema is the curated one (`data.schema_path`, carried in the
run snapshot) or is inferred from the train split and stored as an artifact either way. Every split
is checked against it: types, presence, value counts, integer ranges and the values of string and
boolean domains. Any anomaly stops the run: the three artifacts are published first (so the UI can
show why), then `DataValidationError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from tasks.artifacts.anomalies import AnomaliesProperties, ExampleAnomalies
from tasks.artifacts.base import Output
from tasks.artifacts.examples import SPLITS, Examples
from tasks.artifacts.schema import SCHEMA_FILE, SchemaProperties
from tasks.artifacts.statistics import ExampleStatistics, StatisticsProperties
from tasks.columns import ValueType
from tasks.context import StepContext
from tasks.data.engine import Engine, engine_for
from tasks.data.sketches import ColumnSketch, sketch_files
from tasks.errors import BadInputError
from tasks.schema import ColumnSummary, infer_schema, load_schema, schema_text, value_type
from tasks.step_config import DataSections

log = logging.getLogger(__name__)

MAX_ERRORS_IN_MESSAGE = 4
TOP_VALUES = 10
HISTOGRAM_BUCKETS = 10


class DataValidationError(BadInputError):
    """The examples do not match the schema; one line naming the columns at fault."""


@dataclass
class _Split:
    num_examples: int = 0
    columns: dict[str, ColumnSketch] = field(default_factory=dict)


def run(ctx: StepContext, config: DataSections, *, examples: Examples, statistics: Output[StatisticsProperties],
        schema: Output[SchemaProperties], anomalies: Output[AnomaliesProperties]) -> None:
    stored = {c.name: c.type for c in examples.properties.columns}
    with engine_for(config.data, "validate") as engine:
        splits = {name: _scan(engine, examples, name, stored) for name in SPLITS}
    label = examples.properties.label_column
    if config.data.schema_path:
        expected = load_schema(config.data.schema_path)
        origin, curated = config.data.schema_path, True
    else:
        expected = infer_schema(_summaries(splits["train"]), label, with_domains=False)
        origin, curated = "inferred from the train split", False

    for name, split in splits.items():
        _write_text(statistics.dir / ExampleStatistics.relative_path(name), _statistics(name, split))
    statistics.properties = StatisticsProperties(num_examples={n: s.num_examples for n, s in splits.items()})
    # No run id in it: the same examples give the same file, so the steps after a re-run validate still hit the cache.
    (schema.dir / SCHEMA_FILE).write_text(schema_text(expected, f"schema: {origin}"))
    schema.properties = SchemaProperties(origin=origin, curated=curated, num_features=len(expected.feature))

    found = {name: _anomalies(expected, split) for name, split in splits.items()}
    position = {f.name: i for i, f in enumerate(expected.feature)}  # proto maps have no stable order

    def in_schema_order(found_anomalies: anomalies_pb2.Anomalies) -> list[str]:
        names = sorted(found_anomalies.anomaly_info, key=lambda n: (position.get(n, len(position)), n))
        return [found_anomalies.anomaly_info[n].description for n in names]

    problems = list(dict.fromkeys(d for a in found.values() for d in in_schema_order(a)))
    warnings = [examples.properties.bad_rows_note] if examples.properties.bad_rows else []
    for split_anomalies in found.values():  # a warning: the rows were skipped within data.max_bad_rows
        for note in warnings:
            info = split_anomalies.dataset_anomaly_info
            info.severity = anomalies_pb2.AnomalyInfo.WARNING
            info.short_description, info.description = "Rows skipped by ingest", note
    for name, split_anomalies in found.items():
        _write_text(anomalies.dir / ExampleAnomalies.relative_path(name), split_anomalies)
    anomalies.properties = AnomaliesProperties(num_anomalies=len(problems), descriptions=problems, warnings=warnings,
                                               by_split={n: sorted(a.anomaly_info) for n, a in found.items()})
    if problems:
        for output in (statistics, schema, anomalies):  # the run stops here: what was found stays readable
            output.publish()
        shown = "; ".join(problems[:MAX_ERRORS_IN_MESSAGE])
        more = f"; and {len(problems) - MAX_ERRORS_IN_MESSAGE} more" if len(problems) > MAX_ERRORS_IN_MESSAGE else ""
        raise DataValidationError(f"{len(problems)} data anomalies (schema: {origin}; see {anomalies.uri}): "
                                  f"{shown}{more}")
    for note in warnings:
        log.warning("validate: %s", note)
    log.info("validate: %s matches the schema (%s): %s", examples.uri, origin,
             ", ".join(f"{n} {s.num_examples} examples" for n, s in splits.items()))


def _scan(engine: Engine, examples: Examples, split_name: str, stored: dict[str, ValueType]) -> _Split:
    """One streamed pass over a split (a task per file on the engine); features keep the source's column order."""
    rows, columns = sketch_files(engine, examples.split_files(split_name), stored)
    log.info("validate: %s split, %d examples", split_name, rows)
    return _Split(num_examples=rows, columns=columns)


def _summaries(split: _Split) -> list[ColumnSummary]:
    summaries = []
    for name, column in split.columns.items():
        distinct = None
        if column.distinct is not None and column.value_type not in ("float", "image"):
            distinct = sorted(column.distinct)
        summaries.append(ColumnSummary(name=name, type=column.value_type if column.present else None,
                                       present=column.present, total=split.num_examples, distinct_values=distinct))
    return summaries


_STATS_TYPE = {
    "float": statistics_pb2.FeatureNameStatistics.FLOAT,
    "int": statistics_pb2.FeatureNameStatistics.INT,
    "bool": statistics_pb2.FeatureNameStatistics.INT,
    "string": statistics_pb2.FeatureNameStatistics.STRING,
    "image": statistics_pb2.FeatureNameStatistics.BYTES,
}


def _statistics(name: str, split: _Split) -> statistics_pb2.DatasetFeatureStatisticsList:
    dataset = statistics_pb2.DatasetFeatureStatistics(name=name, num_examples=split.num_examples)
    for feature_name, column in split.columns.items():
        feature = dataset.features.add()
        feature.path.step.append(feature_name)
        feature.type = _STATS_TYPE[column.value_type]
        common = statistics_pb2.CommonStatistics(  # one value per example in every column
            num_non_missing=column.present, num_missing=column.missing,
            min_num_values=1 if column.present else 0, max_num_values=1 if column.present else 0,
            avg_num_values=1.0 if column.present else 0.0, tot_num_values=column.present,
        )
        if column.value_type == "image":
            size = column.total_length / column.present if column.present else 0.0
            feature.bytes_stats.CopyFrom(statistics_pb2.BytesStatistics(
                common_stats=common, avg_num_bytes=size, min_num_bytes=size, max_num_bytes=size))
        elif column.value_type == "string":
            feature.string_stats.CopyFrom(statistics_pb2.StringStatistics(
                common_stats=common, unique=column.unique,
                avg_length=column.total_length / column.present if column.present else 0.0,
                top_values=[statistics_pb2.StringStatistics.FreqAndValue(value=v, frequency=n)
                            for v, n in column.top(TOP_VALUES)],
            ))
        elif column.moments.count:
            moments = column.moments
            feature.num_stats.CopyFrom(statistics_pb2.NumericStatistics(
                common_stats=common, mean=moments.mean, std_dev=moments.std, min=moments.minimum, max=moments.maximum,
                median=column.median, num_zeros=column.zeros,
                histograms=[_histogram(column.equal_width_histogram(HISTOGRAM_BUCKETS))],
            ))
        else:
            feature.num_stats.common_stats.CopyFrom(common)
    return statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])


def _histogram(buckets: list[tuple[float, float, float]]) -> statistics_pb2.Histogram:
    return statistics_pb2.Histogram(type=statistics_pb2.Histogram.STANDARD, buckets=[
        statistics_pb2.Histogram.Bucket(low_value=lo, high_value=hi, sample_count=n) for lo, hi, n in buckets])


def standard_histogram(values: np.ndarray, buckets: int = HISTOGRAM_BUCKETS) -> statistics_pb2.Histogram:
    """TFDV's STANDARD histogram: equal-width buckets from min to max (the drift monitor's baseline)."""
    counts, edges = np.histogram(values, bins=buckets)
    return _histogram([(float(lo), float(hi), float(n)) for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)])


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
        data_type, wanted = column.value_type, value_type(feature)
        if data_type != wanted and not (wanted == "int" and data_type == "bool"):
            add(feature.name, A.UNEXPECTED_DATA_TYPE, "Unexpected data type",
                f"column {feature.name!r} has type {_type_name(data_type)}, the schema expects {_type_name(wanted)}")
            continue
        fraction = column.present / split.num_examples
        if fraction < feature.presence.min_fraction:
            add(feature.name, A.FEATURE_TYPE_LOW_FRACTION_PRESENT, "Column missing in some examples",
                f"column {feature.name!r} is present in {fraction:.1%} of examples, the schema requires "
                f"{feature.presence.min_fraction:.1%}")
        if feature.HasField("value_count") and feature.value_count.min > 1:
            add(feature.name, A.FEATURE_TYPE_LOW_NUMBER_VALUES, "Too few values",
                f"column {feature.name!r} has 1 value in some example, the schema requires at least "
                f"{feature.value_count.min}")
        _domain_anomalies(feature, column, lambda kind, short, text, name=feature.name: add(name, kind, short, text))
    for name, column in split.columns.items():
        if name not in expected and column.present:
            add(name, A.SCHEMA_NEW_COLUMN, "New column", f"column {name!r} is in the data but not in the schema")
    return anomalies


def _domain_anomalies(feature: schema_pb2.Feature, column: ColumnSketch, add: Any) -> None:
    A = anomalies_pb2.AnomalyInfo
    if feature.HasField("int_domain") and column.moments.count:
        domain = feature.int_domain
        if domain.HasField("min") and column.moments.minimum < domain.min:
            add(A.INT_TYPE_SMALL_INT, "Out-of-range values",
                f"column {feature.name!r} has value {int(column.moments.minimum)} below the schema's minimum {domain.min}")
        if domain.HasField("max") and column.moments.maximum > domain.max:
            add(A.INT_TYPE_BIG_INT, "Out-of-range values",
                f"column {feature.name!r} has value {int(column.moments.maximum)} above the schema's maximum {domain.max}")
    if feature.HasField("bool_domain") and column.moments.count and (column.moments.minimum < 0 or column.moments.maximum > 1):
        add(A.BOOL_TYPE_BIG_INT, "Non-boolean values",
            f"column {feature.name!r} has values other than true/false")
    if feature.HasField("string_domain") and feature.string_domain.value:
        domain = set(feature.string_domain.value)
        seen = column.distinct if column.distinct is not None else [v for v, _ in column.top(len(domain) + 10)]
        unexpected = sorted(str(v) for v in seen if str(v) not in domain)
        if unexpected or column.unique > len(domain):
            shown = ", ".join(repr(v) for v in unexpected[:3]) + (", ..." if len(unexpected) > 3 else "")
            add(A.ENUM_TYPE_UNEXPECTED_STRING_VALUES, "Unexpected string values",
                f"column {feature.name!r} has values not in the schema's domain: {shown or f'about {column.unique} distinct values, the domain lists {len(domain)}'}")


def _type_name(kind: ValueType | None) -> str:
    return {"float": "FLOAT", "int": "INT", "bool": "INT (bool)", "string": "BYTES",
            "image": "BYTES (image)"}.get(kind or "", "mixed")


def _write_text(path: Any, message: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(message))
