"""Ingest: a data source (CSV, Parquet, JSON lines, TFRecord, an image folder; any fsspec URL) -> Parquet shards per split (TFX
ExampleGen's Parquet payload format).

Two streamed passes in Arrow record batches, so memory stays flat in the number of rows: the first
types every column (`tasks.data.profile`; a curated schema's type wins where the data fits it, e.g.
whole numbers in a FLOAT column) and fingerprints the file; the second writes the shards. A missing
value is null and is counted; a row without a label is dropped and counted. Rows are split by sha256
of their text (the stripped fields joined by U+001F), so a row lands in the same split on every run
and every machine.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from tasks import tracking
from tasks.artifacts.base import Output
from tasks.artifacts.examples import SPLITS, Column, Examples, ExamplesProperties
from tasks.columns import CsvError, ValueType, preview
from tasks.context import StepContext
from tasks.data import images, values
from tasks.data.engine import engine_for
from tasks.data.partitions import Partition, batches
from tasks.data.profile import merged, profile_partition
from tasks.data.readers import BadRows, Batch
from tasks.schema import column_types
from tasks.step_config import DataSections

log = logging.getLogger(__name__)

_ARROW_TYPES = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}
ROW_GROUP_ROWS = 65_536  # rows buffered per shard before a Parquet row group is written


class IngestError(CsvError):
    """The data source cannot be turned into examples; one line naming the file/row/column."""


class _Shard:
    """One Parquet file of a split (a path or URL), written in row groups of ROW_GROUP_ROWS."""

    def __init__(self, path: str, schema: pa.Schema):
        self.path = path
        fs, where = storage.url_to_fs(path)
        fs.makedirs(where.rsplit("/", 1)[0], exist_ok=True)
        # Dictionary encoding pays for strings, not for numbers that rarely repeat (it was a third of the write).
        strings = [f.name for f in schema if pa.types.is_string(f.type)]
        self.writer = pq.ParquetWriter(where, schema, filesystem=fs, use_dictionary=strings or False)
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
        if self.pending_rows >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=max(self.pending_rows, 1))
            self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


@dataclass
class _Written:
    """What one partition's pass wrote."""

    counts: dict[str, int]
    missing: dict[str, int]
    without_label: int
    files: list[str]
    bad_rows: int
    bad_examples: list[str]


def run(ctx: StepContext, config: DataSections, *, examples: Output[ExamplesProperties]) -> None:
    data = config.data
    source, label = data.source, data.label_column
    with engine_for(data, "ingest") as engine:
        parts = engine.plan(source, data.format, data.image_shape)
        profile = merged(engine.map(profile_partition, parts, "ingest (pass 1 of 2: types)", data.max_bad_rows),
                         source)
        if label not in profile.columns:
            raise IngestError(f"{source}: label column {label!r} is not in the header ({preview(profile.header)})")
        types = column_types(profile, data.schema_path)
        for split in SPLITS:
            (examples.dir / Examples.split_dir(split)).mkdir()
        # Workers in other processes write where all of them can (the step's work folder: a local path or a
        # URL); the files are then moved into the output's staging folder.
        target = storage.join(ctx.work_uri(), "engine-ingest") if engine.remote else str(examples.dir)
        plan = _Plan(types=types, header=profile.header, label=label, eval_percent=data.eval_percent,
                     num_shards=data.num_shards, partitions=len(parts), target=target, max_bad_rows=data.max_bad_rows,
                     image_shape=data.image_shape)
        try:
            written = engine.map(_write_partition, parts, plan)
            if engine.remote:
                _collect(target, [f for w in written for f in w.files], examples.dir)
        finally:
            if engine.remote:  # a failed partition leaves nothing behind either
                storage.remove(target)
    counts = {split: sum(w.counts[split] for w in written) for split in SPLITS}
    missing = {name: sum(w.missing[name] for w in written) for name in profile.header}
    without_label = sum(w.without_label for w in written)
    bad_rows = sum(w.bad_rows for w in written)
    shown = "; ".join(e for w in written for e in w.bad_examples)[:300]
    noun, why = ("images", "that do not decode") if profile.format == "images" else \
        ("rows", "without the header's fields")
    if bad_rows > data.max_bad_rows:  # each partition kept to the limit; together they may not
        raise IngestError(f"{source}: {bad_rows} {noun} {why}, more than data.max_bad_rows: {data.max_bad_rows} "
                          f"({shown})")
    bad_note = f"{bad_rows} {noun} skipped {why} ({shown})" if bad_rows else ""
    for split, count in counts.items():
        if count == 0:
            raise IngestError(f"{source}: the {split} split is empty ({sum(counts.values())} rows with a "
                              f"label is too few)")
    split_bytes = {split: sum(f.stat().st_size for f in (examples.dir / Examples.split_dir(split)).iterdir())
                   for split in SPLITS}
    examples.properties = ExamplesProperties(
        source=source, source_sha256=profile.sha256, label_column=label, row_counts=counts,
        columns=[Column(name=name, type=types[name], missing=missing[name],
                        shape=list(data.image_shape or ()) if types[name] == "image" else None)
                 for name in profile.header],
        rows_without_label=without_label, num_shards=data.num_shards * len(parts), eval_percent=data.eval_percent,
        span=data.span, payload_format="parquet", source_format=profile.format, source_bytes=profile.bytes,
        split_bytes=split_bytes, bad_rows=bad_rows, bad_rows_note=bad_note,
    )
    _track(config, ctx, source, profile.sha256, counts, without_label, bad_rows)
    if bad_note:
        log.warning("ingest: %s: %s", source, bad_note)
    span_note = "" if data.span is None else f" (span {data.span})"
    log.info("ingest: %s%s (%s, %.1f MB, %d partitions on %s) -> %s (train %d rows, eval %d rows, %d dropped "
             "without a label, %d Parquet shards each)", source, span_note, profile.format, profile.bytes / 1e6,
             len(parts), engine.name, examples.uri, counts["train"], counts["eval"], without_label,
             data.num_shards * len(parts))


@dataclass(frozen=True)
class _Plan:
    types: dict[str, ValueType]
    header: list[str]
    label: str
    eval_percent: int
    num_shards: int
    partitions: int
    target: str  # the folder (path or URL) that gets Split-*/ files
    max_bad_rows: int
    image_shape: tuple[int, int, int] | None = None


def _write_partition(partition: Partition, plan: _Plan) -> _Written:
    """The partition's rows, typed, split by hash and written as `num_shards` Parquet files per split."""
    schema = pa.schema([(name, images.image_type(plan.image_shape) if plan.types[name] == "image" and plan.image_shape
                         else _ARROW_TYPES[plan.types[name]]) for name in plan.header])
    total = plan.partitions * plan.num_shards
    shards: dict[tuple[str, int], _Shard] = {}
    for split in SPLITS:
        for shard in range(plan.num_shards):
            name = Examples.shard_name(partition.index * plan.num_shards + shard, total)
            shards[split, shard] = _Shard(storage.join(plan.target, Examples.split_dir(split), name), schema)
    counts = dict.fromkeys(SPLITS, 0)
    missing = dict.fromkeys(plan.header, 0)
    without_label = 0
    bad_rows = BadRows(plan.max_bad_rows)
    try:
        for batch in batches(partition, "ingest (pass 2 of 2: shards)", bad_rows):
            table = _typed_table(batch, plan.types, schema, partition.where)
            labelled = pc.invert(pc.is_null(table.column(plan.label)))
            without_label += batch.num_rows - int(pc.sum(labelled).as_py() or 0)
            table = table.filter(labelled)
            digests = _row_digests(pc.filter(_row_text(batch, plan.header), labelled))
            for name in plan.header:
                missing[name] += table.column(name).null_count
            # One sort of the row numbers by (split, shard), then a take per file: each file's rows are copied
            # out, so what waits for a row group holds no reference to the whole batch.
            is_train = (digests % 100 >= plan.eval_percent).astype(np.int64)
            group = is_train * plan.num_shards + ((digests // 100) % plan.num_shards).astype(np.int64)
            order = np.argsort(group, kind="stable")
            sizes = np.bincount(group, minlength=len(SPLITS) * plan.num_shards)
            offset = 0
            for index, size in enumerate(sizes.tolist()):
                split = "eval" if index < plan.num_shards else "train"
                counts[split] += size
                shards[split, index % plan.num_shards].add(table.take(pa.array(order[offset:offset + size])))
                offset += size
    finally:
        for shard_writer in shards.values():
            shard_writer.close()
    return _Written(counts, missing, without_label, [s.path for s in shards.values()], bad_rows.count,
                    bad_rows.examples)


def _collect(target: str, files: list[str], staging: Path) -> None:
    """Move the workers' files into the output's staging folder (downloaded from object storage)."""
    prefix = target.rstrip("/") + "/"
    for file in files:
        local = staging / file[len(prefix):]
        if storage.is_local(file):
            shutil.move(storage.local_path(file), local)
        else:
            fs, path = storage.url_to_fs(file)
            fs.get(path, str(local))


def _typed_table(batch: Batch, types: dict[str, ValueType], schema: pa.Schema, source: str) -> pa.Table:
    columns = [values.typed(array, types[name], f"{source} column {name!r}", batch.first_row)
               for name, array in batch.columns.items()]
    return pa.Table.from_arrays(columns, schema=schema)


def _row_text(batch: Batch, header: list[str]) -> pa.Array:
    """Each row's fields as text (an image: its pixels), joined by U+001F: what the split hash reads."""
    columns = [batch.columns[name] for name in header]
    if not any(pa.types.is_fixed_size_binary(c.type) for c in columns):
        return pc.binary_join_element_wise(*[values.as_text(c) for c in columns], "\x1f")
    fields = [pc.cast(c if pa.types.is_fixed_size_binary(c.type) else values.as_text(c), pa.binary()) for c in columns]
    return pc.binary_join_element_wise(*fields, pa.scalar(b"\x1f"))


def _row_digests(text: pa.Array) -> np.ndarray:
    """The first 8 bytes of each row's sha256, as unsigned integers: stable everywhere, independent of order."""
    sha256 = hashlib.sha256
    heads = b"".join([sha256(row).digest()[:8] for row in pc.cast(text, pa.binary()).to_pylist()])
    return np.frombuffer(heads, dtype=">u8").astype(np.uint64)


def _track(config: DataSections, ctx: StepContext, source: str, sha256: str, counts: dict[str, int],
           without_label: int, bad_rows: int) -> None:
    import mlflow

    span = {} if config.data.span is None else {"data.span": config.data.span}
    tracking.log_params({"data.source": source, "data.eval_percent": config.data.eval_percent, **span})
    mlflow.log_metrics({f"rows_{split}": count for split, count in counts.items()}
                       | {"rows_without_label": without_label, "rows_bad": bad_rows})
    tracking.tag_data(ctx, source, sha256, config.data.span)
