"""Ingest: a CSV file -> sharded, gzipped TFRecords of `tf.train.Example` (TFX ExampleGen's layout).

Rows are split by a hash of their content, so a row lands in the same split on every run and
every machine. Features are floats, the label an int64. This module also owns the reading side
of the `Examples` format (`split_files`, `load_split`, `iter_examples`), so other steps never
guess file names.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
from collections.abc import Iterator
from typing import Any

import fsspec

from tasks.artifacts import StepContext, publish_artifact, read_artifact
from tasks.config import PipelineConfig
from tasks.errors import BadInputError

log = logging.getLogger(__name__)

KIND = "Examples"
SPLITS = ("train", "eval")


class IngestError(BadInputError):
    """The data source cannot be turned into examples; one line naming the file/row/column."""


def run(config: PipelineConfig, ctx: StepContext) -> dict[str, str]:
    source = config.data.source
    label = config.data.label_column
    raw = _read_source(source)
    header, rows = _parse_csv(raw, source, label)
    out_uri = ctx.output_uri("ingest", "examples")
    num_shards = config.data.num_shards
    properties: dict[str, Any] = {
        "source": source,
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "columns": header,
        "feature_columns": [c for c in header if c != label],
        "label_column": label,
        "num_shards": num_shards,
        "eval_percent": config.data.eval_percent,
    }
    buckets = _assign(rows, config.data.eval_percent, num_shards)
    counts = {split: sum(len(shard) for shard in buckets[split]) for split in SPLITS}
    for split, count in counts.items():
        if count == 0:
            raise IngestError(f"{source}: the {split} split is empty ({len(rows)} rows is too few)")
    properties["row_counts"] = counts

    import tensorflow as tf

    label_index = header.index(label)
    with publish_artifact(out_uri, KIND, properties) as staging:
        for split in SPLITS:
            folder = staging / f"Split-{split}"
            folder.mkdir()
            for shard, shard_rows in enumerate(buckets[split]):
                path = folder / _shard_name(shard, num_shards)
                with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
                    for values in shard_rows:
                        writer.write(_to_example(tf, header, values, label_index).SerializeToString())
    log.info("ingest: %s -> %s (train %d rows, eval %d rows, %d shards each)",
             source, out_uri, counts["train"], counts["eval"], num_shards)
    return {"examples": out_uri}


def _read_source(source: str) -> bytes:
    try:
        with fsspec.open(source, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, IsADirectoryError):
        raise IngestError(f"data source not found: {source}") from None


def _parse_csv(raw: bytes, source: str, label: str) -> tuple[list[str], list[list[Any]]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise IngestError(f"{source}: the CSV is empty (no header row)")
    header = [h.strip() for h in header]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates or "" in header:
        raise IngestError(f"{source}: header has duplicate or empty column names {duplicates or ['']}")
    if label not in header:
        raise IngestError(f"{source}: label column {label!r} is not in the header ({_preview(header)})")
    label_index = header.index(label)
    rows: list[list[Any]] = []
    for line_no, fields in enumerate(reader, start=2):
        if not fields:
            continue  # blank line
        if len(fields) != len(header):
            raise IngestError(f"{source} line {line_no}: {len(fields)} fields, the header has {len(header)}")
        rows.append([_number(source, line_no, header[i], v, i == label_index) for i, v in enumerate(fields)])
    if not rows:
        raise IngestError(f"{source}: the CSV has a header but no data rows")
    return header, rows


def _number(source: str, line_no: int, column: str, text: str, is_label: bool) -> float | int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise IngestError(f"{source} line {line_no} column {column!r}: {text!r} is not a finite number")
    if is_label:
        if not value.is_integer():
            raise IngestError(f"{source} line {line_no} label column {column!r}: {text!r} is not an integer")
        return int(value)
    return value


def _preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"columns: {shown}, ..." if len(names) > limit else f"columns: {shown}"


def _assign(rows: list[list[Any]], eval_percent: int, num_shards: int) -> dict[str, list[list[list[Any]]]]:
    """Split and shard by sha256 of the row's canonical text: stable everywhere, order-free."""
    buckets: dict[str, list[list[list[Any]]]] = {s: [[] for _ in range(num_shards)] for s in SPLITS}
    for values in rows:
        digest = int.from_bytes(hashlib.sha256(",".join(map(repr, values)).encode()).digest()[:8], "big")
        split = "eval" if digest % 100 < eval_percent else "train"
        buckets[split][(digest // 100) % num_shards].append(values)
    return buckets


def _to_example(tf: Any, header: list[str], values: list[Any], label_index: int) -> Any:
    feature = {}
    for i, (name, value) in enumerate(zip(header, values, strict=True)):
        if i == label_index:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _shard_name(shard: int, num_shards: int) -> str:
    return f"data_tfrecord-{shard:05d}-of-{num_shards:05d}.gz"


# --- reading side -------------------------------------------------------------------------------


def split_files(examples_uri: str, split: str) -> list[str]:
    """The TFRecord shard files of one split (local paths or URLs), sorted."""
    artifact = read_artifact(examples_uri, KIND)
    fs, root = fsspec.core.url_to_fs(artifact.path(f"Split-{split}"))
    files = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".gz"))
    if not files:
        raise IngestError(f"{examples_uri}: split {split!r} has no TFRecord files")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return files if protocol in ("file", "local") else [f"{protocol}://{p}" for p in files]


def iter_examples(examples_uri: str, split: str) -> Iterator[Any]:
    """Every `tf.train.Example` of a split, parsed as a proto (for validation: no schema assumed)."""
    import tensorflow as tf

    dataset = tf.data.TFRecordDataset(split_files(examples_uri, split), compression_type="GZIP")
    for record in dataset.as_numpy_iterator():
        yield tf.train.Example.FromString(record)


def load_split(examples_uri: str, split: str) -> tuple[Any, Any]:
    """(features float32 [N, F] in `feature_columns` order, labels int64 [N]) of a split, in memory."""
    import numpy as np
    import tensorflow as tf

    artifact = read_artifact(examples_uri, KIND)
    columns = artifact.properties["feature_columns"]
    label = artifact.properties["label_column"]
    spec = {c: tf.io.FixedLenFeature([], tf.float32) for c in columns}
    spec[label] = tf.io.FixedLenFeature([], tf.int64)
    dataset = tf.data.TFRecordDataset(split_files(examples_uri, split), compression_type="GZIP")
    features, labels = [], []
    for batch in dataset.batch(1024).map(lambda r: tf.io.parse_example(r, spec)).as_numpy_iterator():
        features.append(np.stack([batch[c] for c in columns], axis=1))
        labels.append(batch[label])
    return np.concatenate(features).astype(np.float32), np.concatenate(labels).astype(np.int64)

