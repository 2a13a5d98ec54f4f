"""`Examples`: the ingested data as gzipped TFRecord shards of `tf.train.Example`, split train/eval.

Layout (TFX ExampleGen's): `Split-{split}/data_tfrecord-{shard:05d}-of-{num_shards:05d}.gz`. A missing
value is a feature absent from its example; booleans are stored as int64 0/1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fsspec
from pydantic import BaseModel, ConfigDict

from tasks.artifacts.base import ArtifactError, ArtifactType, Properties
from tasks.columns import ValueType

SPLITS = ("train", "eval")


class Column(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: ValueType
    missing: int = 0  # rows without a value (in both splits)


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


class Examples(ArtifactType[ExamplesProperties]):
    KIND = "Examples"
    Properties = ExamplesProperties

    @staticmethod
    def split_dir(split: str) -> str:
        return f"Split-{split}"

    @staticmethod
    def shard_name(shard: int, num_shards: int) -> str:
        return f"data_tfrecord-{shard:05d}-of-{num_shards:05d}.gz"

    def column(self, name: str) -> Column:
        for column in self.properties.columns:
            if column.name == name:
                return column
        raise ArtifactError(f"{self.uri}: no column {name!r}")

    @property
    def feature_columns(self) -> list[Column]:
        return [c for c in self.properties.columns if c.name != self.properties.label_column]

    def split_files(self, split: str) -> list[str]:
        """The TFRecord shard files of one split (local paths or URLs), sorted."""
        fs, root = fsspec.core.url_to_fs(self.path(self.split_dir(split)))
        files = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".gz"))
        if not files:
            raise ArtifactError(f"{self.uri}: split {split!r} has no TFRecord files")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        return files if protocol in ("file", "local") else [f"{protocol}://{p}" for p in files]

    def iter_examples(self, split: str) -> Iterator[Any]:
        """Every `tf.train.Example` of a split, parsed as a proto (for statistics: no schema assumed)."""
        import tensorflow as tf

        from common.storage import local_files

        dataset = tf.data.TFRecordDataset(local_files(self.split_files(split)), compression_type="GZIP")
        for record in dataset.as_numpy_iterator():
            yield tf.train.Example.FromString(record)
