"""Validate: StatisticsGen, SchemaGen and ExampleValidator in TFDV's formats (TFDV cannot be installed).

Statistics are computed per split. The schema is the curated one (`data.schema_path`, carried in the
run snapshot) or is inferred from the train split and stored as an artifact either way. Every split
is checked against it: types, presence, value counts, integer ranges and the values of string and
boolean domains. Any anomaly stops the run: the three artifacts are published first (so the UI can
show why), then `DataValidationError`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
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
from tasks.columns import DISTINCT_CAP, ValueType
from tasks.context import StepContext
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
class _Column:
    """Everything seen of one feature in one split."""

    kinds: set[str] = field(default_factory=set)
    present: int = 0
    numbers: list[float] = field(default_factory=list)
    strings: Counter[str] = field(default_factory=Counter)
    min_count: int = 1 << 62
    max_count: int = 0


@dataclass
class _Split:
    num_examples: int = 0
    columns: dict[str, _Column] = field(default_factory=dict)


def run(ctx: StepContext, config: DataSections, *, examples: Examples, statistics: Output[StatisticsProperties],
        schema: Output[SchemaProperties], anomalies: Output[AnomaliesProperties]) -> None:
    stored = {c.name: c.type for c in examples.properties.columns}
    splits = {name: _scan(examples.iter_examples(name), list(stored)) for name in SPLITS}
    label = examples.properties.label_column
    if config.data.schema_path:
        expected = load_schema(config.data.schema_path)
        origin, curated = config.data.schema_path, True
    else:
        expected = infer_schema(_summaries(splits["train"], stored), label, with_domains=False)
        origin, curated = "inferred from the train split", False

    for name, split in splits.items():
        _write_text(statistics.dir / ExampleStatistics.relative_path(name), _statistics(name, split, stored))
    statistics.properties = StatisticsProperties(num_examples={n: s.num_examples for n, s in splits.items()})
    (schema.dir / SCHEMA_FILE).write_text(schema_text(expected, f"schema of run {ctx.run_id}: {origin}"))
    schema.properties = SchemaProperties(origin=origin, curated=curated, num_features=len(expected.feature))

    found = {name: _anomalies(expected, split, stored) for name, split in splits.items()}
    position = {f.name: i for i, f in enumerate(expected.feature)}  # proto maps have no stable order

    def in_schema_order(found_anomalies: anomalies_pb2.Anomalies) -> list[str]:
        names = sorted(found_anomalies.anomaly_info, key=lambda n: (position.get(n, len(position)), n))
        return [found_anomalies.anomaly_info[n].description for n in names]

    problems = list(dict.fromkeys(d for a in found.values() for d in in_schema_order(a)))
    for name, split_anomalies in found.items():
        _write_text(anomalies.dir / ExampleAnomalies.relative_path(name), split_anomalies)
    anomalies.properties = AnomaliesProperties(num_anomalies=len(problems), descriptions=problems,
                                               by_split={n: sorted(a.anomaly_info) for n, a in found.items()})
    if problems:
        for output in (statistics, schema, anomalies):  # the run stops here: what was found stays readable
            output.publish()
        shown = "; ".join(problems[:MAX_ERRORS_IN_MESSAGE])
        more = f"; and {len(problems) - MAX_ERRORS_IN_MESSAGE} more" if len(problems) > MAX_ERRORS_IN_MESSAGE else ""
        raise DataValidationError(f"{len(problems)} data anomalies (schema: {origin}; see {anomalies.uri}): "
                                  f"{shown}{more}")
    log.info("validate: %s matches the schema (%s): %s", examples.uri, origin,
             ", ".join(f"{n} {s.num_examples} examples" for n, s in splits.items()))


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
            if kind == "bytes_list":
                column.strings.update(v.decode("utf-8", errors="replace") for v in values)
            else:
                column.numbers.extend(float(v) for v in values)
    return split


_KIND_OF_LIST = {"float_list": "float", "int64_list": "int", "bytes_list": "string"}


def _data_type(column: _Column, stored: ValueType | None) -> ValueType | None:
    """The value type seen in the data; booleans are int64 lists stored from a bool column."""
    kinds = column.kinds - {"none"}
    if len(kinds) != 1:
        return None
    kind = _KIND_OF_LIST[kinds.pop()]
    return "bool" if kind == "int" and stored == "bool" else kind


def _summaries(split: _Split, stored: dict[str, ValueType]) -> list[ColumnSummary]:
    summaries = []
    for name, column in split.columns.items():
        kind = _data_type(column, stored.get(name))
        if kind == "string":
            distinct = sorted(column.strings) if len(column.strings) <= DISTINCT_CAP else None
        elif kind == "bool":
            distinct = sorted({bool(v) for v in column.numbers})
        else:
            unique = set(column.numbers)
            distinct = sorted(int(v) if kind == "int" else v for v in unique) if len(unique) <= DISTINCT_CAP else None
        summaries.append(ColumnSummary(name=name, type=kind, present=column.present, total=split.num_examples,
                                       distinct_values=distinct))
    return summaries


_STATS_TYPE = {
    "float": statistics_pb2.FeatureNameStatistics.FLOAT,
    "int": statistics_pb2.FeatureNameStatistics.INT,
    "bool": statistics_pb2.FeatureNameStatistics.INT,
    "string": statistics_pb2.FeatureNameStatistics.STRING,
}


def _statistics(name: str, split: _Split, stored: dict[str, ValueType]) -> statistics_pb2.DatasetFeatureStatisticsList:
    dataset = statistics_pb2.DatasetFeatureStatistics(name=name, num_examples=split.num_examples)
    for feature_name, column in split.columns.items():
        feature = dataset.features.add()
        feature.path.step.append(feature_name)
        kind = _data_type(column, stored.get(feature_name)) or stored.get(feature_name, "float")
        feature.type = _STATS_TYPE[kind]
        count = sum(column.strings.values()) if kind == "string" else len(column.numbers)
        common = statistics_pb2.CommonStatistics(
            num_non_missing=column.present,
            num_missing=split.num_examples - column.present,
            min_num_values=column.min_count if column.present else 0,
            max_num_values=column.max_count,
            avg_num_values=count / max(column.present, 1),
            tot_num_values=count,
        )
        if kind == "string":
            top = column.strings.most_common(TOP_VALUES)
            feature.string_stats.CopyFrom(statistics_pb2.StringStatistics(
                common_stats=common, unique=len(column.strings),
                avg_length=float(np.mean([len(s) for s in column.strings.elements()])) if count else 0.0,
                top_values=[statistics_pb2.StringStatistics.FreqAndValue(value=v, frequency=n) for v, n in top],
            ))
        elif column.numbers:
            values = np.asarray(column.numbers, dtype=np.float64)
            feature.num_stats.CopyFrom(statistics_pb2.NumericStatistics(
                common_stats=common, mean=values.mean(), std_dev=values.std(), min=values.min(),
                max=values.max(), median=float(np.median(values)), num_zeros=int((values == 0).sum()),
                histograms=[standard_histogram(values)],
            ))
        else:
            feature.num_stats.common_stats.CopyFrom(common)
    return statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])


def standard_histogram(values: np.ndarray, buckets: int = HISTOGRAM_BUCKETS) -> statistics_pb2.Histogram:
    """TFDV's STANDARD histogram: equal-width buckets from min to max (the drift monitor's baseline)."""
    counts, edges = np.histogram(values, bins=buckets)
    return statistics_pb2.Histogram(type=statistics_pb2.Histogram.STANDARD, buckets=[
        statistics_pb2.Histogram.Bucket(low_value=float(lo), high_value=float(hi), sample_count=float(n))
        for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)])


def _anomalies(schema: schema_pb2.Schema, split: _Split, stored: dict[str, ValueType]) -> anomalies_pb2.Anomalies:
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
        data_type, wanted = _data_type(column, stored.get(feature.name)), value_type(feature)
        if data_type != wanted and not (wanted == "int" and data_type == "bool"):
            add(feature.name, A.UNEXPECTED_DATA_TYPE, "Unexpected data type",
                f"column {feature.name!r} has type {_type_name(data_type)}, the schema expects {_type_name(wanted)}")
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
        _domain_anomalies(feature, column, lambda kind, short, text, name=feature.name: add(name, kind, short, text))
    for name, column in split.columns.items():
        if name not in expected and column.present:
            add(name, A.SCHEMA_NEW_COLUMN, "New column", f"column {name!r} is in the data but not in the schema")
    return anomalies


def _domain_anomalies(feature: schema_pb2.Feature, column: _Column, add: Any) -> None:
    A = anomalies_pb2.AnomalyInfo
    if feature.HasField("int_domain") and column.numbers:
        low, high = min(column.numbers), max(column.numbers)
        domain = feature.int_domain
        if domain.HasField("min") and low < domain.min:
            add(A.INT_TYPE_SMALL_INT, "Out-of-range values",
                f"column {feature.name!r} has value {int(low)} below the schema's minimum {domain.min}")
        if domain.HasField("max") and high > domain.max:
            add(A.INT_TYPE_BIG_INT, "Out-of-range values",
                f"column {feature.name!r} has value {int(high)} above the schema's maximum {domain.max}")
    if feature.HasField("bool_domain") and set(column.numbers) - {0.0, 1.0}:
        add(A.BOOL_TYPE_BIG_INT, "Non-boolean values",
            f"column {feature.name!r} has values other than true/false")
    if feature.HasField("string_domain") and feature.string_domain.value:
        unexpected = sorted(set(column.strings) - set(feature.string_domain.value))
        if unexpected:
            shown = ", ".join(repr(v) for v in unexpected[:3]) + (", ..." if len(unexpected) > 3 else "")
            add(A.ENUM_TYPE_UNEXPECTED_STRING_VALUES, "Unexpected string values",
                f"column {feature.name!r} has values not in the schema's domain: {shown}")


def _type_name(kind: ValueType | None) -> str:
    return {"float": "FLOAT", "int": "INT", "bool": "INT (bool)", "string": "BYTES"}.get(kind or "", "mixed")


def _write_text(path: Any, message: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(message))
