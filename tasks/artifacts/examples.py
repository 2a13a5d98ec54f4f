"""`Examples`: the ingested data as Parquet shards (TFX ExampleGen's Parquet payload format), split train/eval.

Layout (ExampleGen's): `Split-{split}/data_parquet-{shard:05d}-of-{num_shards:05d}.parquet`. Each column is
typed (bool, int64, float64 or string) and a missing value is null. Readers stream record batches
(`batches`) in bounded memory; training reads the same files through tf.data (tasks.features.dataset).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from common.parquet import parquet_batches
from tasks.artifacts.base import ArtifactError, ArtifactType, Properties
from tasks.columns import ValueType

SPLITS = ("train", "eval")


class Column(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: ValueType
    missing: int = 0  # rows without a value (in both splits)
    shape: list[int] | None = None  # an image's [height, width, channels] (its pixels: a fixed-size binary value)


class ExamplesProperties(Properties):
    source: str
    source_sha256: str
    columns: list[Column]
    label_column: str
    row_counts: dict[str, int]
    rows_without_label: int = 0  # dropped: a row without a label teaches nothing
    num_shards: int
    eval_percent: int
    span: int | None = None  # which span of a spanned data.source (tasks.spans)
    # How the examples are stored: kiln before the Arrow readers wrote TFRecord, which it reads no more.
    payload_format: Literal["parquet", "tfrecord"] = "tfrecord"
    source_format: str = "csv"
    source_bytes: int = 0
    split_bytes: dict[str, int] = {}  # the Parquet files' size on disk, per split
    bad_rows: int = 0  # ragged CSV rows skipped (data.max_bad_rows)
    bad_rows_note: str = ""  # how many, and the first ones' text


class Examples(ArtifactType[ExamplesProperties]):
    KIND = "Examples"
    Properties = ExamplesProperties

    @staticmethod
    def split_dir(split: str) -> str:
        return f"Split-{split}"

    @staticmethod
    def shard_name(shard: int, num_shards: int) -> str:
        return f"data_parquet-{shard:05d}-of-{num_shards:05d}.parquet"

    def column(self, name: str) -> Column:
        for column in self.properties.columns:
            if column.name == name:
                return column
        raise ArtifactError(f"{self.uri}: no column {name!r}")

    @property
    def feature_columns(self) -> list[Column]:
        return [c for c in self.properties.columns if c.name != self.properties.label_column]

    def split_files(self, split: str) -> list[str]:
        """The Parquet shard files of one split (local paths or URLs), sorted."""
        if self.properties.payload_format != "parquet":
            raise ArtifactError(f"{self.uri}: examples stored as TFRecord by an older kiln; run the pipeline again "
                                f"to ingest them as Parquet")
        fs, root = fsspec.core.url_to_fs(self.path(self.split_dir(split)))
        files = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".parquet"))
        if not files:
            raise ArtifactError(f"{self.uri}: split {split!r} has no Parquet files")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return files if protocol in ("file", "local") else [f"{protocol}://{p}" for p in files]

    def batches(self, split: str, columns: list[str] | None = None, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """A split's rows as Arrow record batches (typed columns, missing = null), in bounded memory."""
        for file in self.split_files(split):
            with fsspec.open(file, "rb") as handle:
                yield from parquet_batches(pq.ParquetFile(handle), batch_rows, columns=columns)
