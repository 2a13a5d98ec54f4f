"""Ingest: a CSV file -> sharded, gzipped TFRecords of `tf.train.Example` (TFX ExampleGen's layout).

Two streamed passes: the first types every column (`tasks.columns`: bool, int, float, string; a
curated schema's type wins where the data fits it, e.g. whole numbers in a FLOAT column) and
fingerprints the file; the second writes the examples. A missing value is a feature left out of
its example and is counted; a row without a label is dropped and counted. Rows are split by a hash
of their text, so a row lands in the same split on every run and every machine.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from tasks import tracking
from tasks.artifacts.base import Output
from tasks.artifacts.examples import SPLITS, Column, Examples, ExamplesProperties
from tasks.columns import CsvError, CsvRows, ValueType, parse_value, preview, profile_csv
from tasks.context import StepContext
from tasks.schema import column_types
from tasks.step_config import DataSections

log = logging.getLogger(__name__)


class IngestError(CsvError):
    """The data source cannot be turned into examples; one line naming the file/row/column."""


def run(ctx: StepContext, config: DataSections, *, examples: Output[ExamplesProperties]) -> None:
    source, label = config.data.source, config.data.label_column
    profile = profile_csv(source)
    if label not in profile.columns:
        raise IngestError(f"{source}: label column {label!r} is not in the header ({preview(profile.header)})")
    types = column_types(profile, config.data.schema_path)
    num_shards = config.data.num_shards

    import tensorflow as tf

    counts = {split: 0 for split in SPLITS}
    missing = dict.fromkeys(profile.header, 0)
    without_label = 0
    with CsvRows(source) as rows:
        writers = {}
        for split in SPLITS:
            (examples.dir / Examples.split_dir(split)).mkdir()
            for shard in range(num_shards):
                path = examples.dir / Examples.split_dir(split) / Examples.shard_name(shard, num_shards)
                writers[split, shard] = tf.io.TFRecordWriter(str(path), options="GZIP")
        try:
            for _, fields in rows:
                values = {name: parse_value(text, types[name]) for name, text in zip(rows.header, fields, strict=True)}
                if values[label] is None:
                    without_label += 1
                    continue
                for name, value in values.items():
                    missing[name] += value is None
                split, shard = _assign(fields, config.data.eval_percent, num_shards)
                counts[split] += 1
                writers[split, shard].write(_example(tf, values, types).SerializeToString())
        finally:
            for writer in writers.values():
                writer.close()
        for split, count in counts.items():
            if count == 0:
                raise IngestError(f"{source}: the {split} split is empty ({sum(counts.values())} rows with a "
                                  f"label is too few)")
        examples.properties = ExamplesProperties(
            source=source, source_sha256=profile.sha256, label_column=label, row_counts=counts,
            columns=[Column(name=name, type=types[name], missing=missing[name]) for name in profile.header],
            rows_without_label=without_label, num_shards=num_shards, eval_percent=config.data.eval_percent,
            span=config.data.span,
        )
    _track(config, ctx, source, profile.sha256, counts, without_label)
    span_note = "" if config.data.span is None else f" (span {config.data.span})"
    log.info("ingest: %s%s -> %s (train %d rows, eval %d rows, %d dropped without a label, %d shards each)",
             source, span_note, examples.uri, counts["train"], counts["eval"], without_label, num_shards)


def _assign(fields: list[str], eval_percent: int, num_shards: int) -> tuple[str, int]:
    """Split and shard by sha256 of the row's text: stable everywhere, independent of row order."""
    text = "\x1f".join(f.strip() for f in fields)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return ("eval" if digest % 100 < eval_percent else "train"), (digest // 100) % num_shards


def _example(tf: Any, values: dict[str, Any], types: dict[str, ValueType]) -> Any:
    feature = {}
    for name, value in values.items():
        if value is None:
            continue  # missing: the feature is absent from this example
        kind = types[name]
        if kind == "float":
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        elif kind == "string":
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        else:  # int, and bool as 0/1
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _track(config: DataSections, ctx: StepContext, source: str, sha256: str, counts: dict[str, int],
           without_label: int) -> None:
    import mlflow

    span = {} if config.data.span is None else {"data.span": config.data.span}
    tracking.log_params({"data.source": source, "data.eval_percent": config.data.eval_percent, **span})
    mlflow.log_metrics({f"rows_{split}": count for split, count in counts.items()} | {"rows_without_label": without_label})
    tracking.tag_parent(ctx, {"kiln.data_source": source, "kiln.data_fingerprint": sha256,
                                      **({"kiln.data_span": str(config.data.span)} if span else {})})
