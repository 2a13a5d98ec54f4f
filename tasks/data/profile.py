"""A data source's profile in one streamed pass: each column's type, missing count, distinct values (up
to DISTINCT_CAP) and numeric range and moments. `kiln init`, `kiln data add`, ingest and the drift
monitor all type a source from it, so they read every file the same way."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.columns import DISTINCT_CAP, ValueType, parse_value, preview
from tasks.data import images, values
from tasks.data.moments import Moments
from tasks.data.partitions import Partition, batches, header, plan
from tasks.data.readers import BadRows, DataError, Format, Reader, file_sha256, file_size


@dataclass
class ColumnProfile:
    """What one pass over a column saw."""

    name: str
    kinds: values.Kinds = field(default_factory=values.Kinds)
    values: Counter[str] = field(default_factory=Counter)  # value text -> count, until capped
    capped: bool = False  # more than DISTINCT_CAP distinct values
    moments: Moments = field(default_factory=Moments)  # of the numeric values

    @property
    def type(self) -> ValueType | None:
        return self.kinds.value_type

    @property
    def present(self) -> int:
        return sum(self.kinds.counts()[1:])

    @property
    def missing(self) -> int:
        return self.kinds.missing

    def update(self, array: pa.Array) -> None:
        """Add one batch of the column (stripped text or a typed column)."""
        if values.stored_type(array.type) is None and not pa.types.is_null(array.type):
            found = values.classify(array, known=self.type if self.type in ("string", "float") else None)
            kinds, missing, numbers = found.kinds, found.missing, found.numbers
        else:
            kinds, missing = values.kinds(array), values.missing_mask(array)
            numbers = pc.cast(array, pa.float64()) if values.stored_type(array.type) in ("int", "float") else None
        self.kinds = self.kinds.merged(kinds)
        if kinds.image:  # pixels are not values to count: an image column has no domain
            self.capped = True
            return
        self._count_values(pc.filter(array, pc.invert(missing)))
        if numbers is not None:
            self._add_numbers(numbers.drop_null().to_numpy(zero_copy_only=False))

    def _count_values(self, present: pa.Array) -> None:
        """Count each value while there are at most DISTINCT_CAP distinct ones. Past the cap the counts are not
        read (a capped column has no domain and no classes), so the counting stops."""
        if self.capped:
            return
        counts = pc.value_counts(values.as_text(present))
        items, numbers = counts.field("values"), counts.field("counts")
        kept = pc.is_in(items, value_set=pa.array(list(self.values), pa.string()))
        for item, number in zip(pc.filter(items, kept).to_pylist(), pc.filter(numbers, kept).to_pylist(), strict=True):
            self.values[item] += number
        new_items, new_numbers = pc.filter(items, pc.invert(kept)), pc.filter(numbers, pc.invert(kept))
        room = DISTINCT_CAP - len(self.values)
        if len(new_items) > room:
            self.capped = True
        self.values.update(dict(zip(new_items[:room].to_pylist(), new_numbers[:room].to_pylist(), strict=True)))

    def _add_numbers(self, numbers: np.ndarray) -> None:
        self.moments.add(numbers[np.isfinite(numbers)])

    def merge(self, other: ColumnProfile) -> None:
        """Add what a pass over another partition of the column saw (its values count after this one's)."""
        self.kinds = self.kinds.merged(other.kinds)
        for item, number in other.values.items():
            if item in self.values or len(self.values) < DISTINCT_CAP:
                self.values[item] += number
            else:
                self.capped = True
        self.capped = self.capped or other.capped
        self.moments.merge(other.moments)

    @property
    def numbers(self) -> int:
        """Numeric values seen."""
        return self.moments.count

    @property
    def mean(self) -> float:
        return self.moments.mean

    @property
    def minimum(self) -> float:
        return self.moments.minimum

    @property
    def maximum(self) -> float:
        return self.moments.maximum

    @property
    def std(self) -> float:
        """Population standard deviation of the numeric values (NaN with none)."""
        return self.moments.std if self.moments.count else math.nan

    @property
    def distinct(self) -> int | None:
        """Number of distinct values (as the column's type: `TRUE` and `true` are one), None beyond the cap."""
        return None if self.capped else len(self.typed_values())

    def typed_values(self) -> list[Any]:
        """The distinct values as the column's type, sorted (ints numerically)."""
        kind = self.type or "string"
        return sorted({parse_value(v, kind) for v in self.values})


@dataclass
class DataProfile:
    source: str
    format: Format
    header: list[str]
    rows: int
    columns: dict[str, ColumnProfile]
    sha256: str
    bytes: int
    listing: list[str] = field(default_factory=list)  # an image folder's sha256sum lines (tasks.data.images)


def profile_source(source: str, format: str | None = None, step: str = "profile",
                   image_shape: images.Shape | None = None) -> DataProfile:
    """One streamed pass over `source` (each of its files; an image folder's images decoded to `image_shape`); a
    source without rows is an error."""
    parts = plan(source, format, partitions=1, image_shape=image_shape)
    return merged([profile_partition(partition, step) for partition in parts], source)


def profile_partition(partition: Partition, step: str = "profile", max_bad_rows: int = 0) -> DataProfile:
    """A pass over one partition (for a single partition: the whole file, with its digest and size); up to
    `max_bad_rows` ragged CSV rows are skipped."""
    if partition.whole:
        with Reader(partition.source, partition.format, step=step, max_bad_rows=max_bad_rows) as reader:
            columns = {name: ColumnProfile(name) for name in reader.names}
            for batch in reader:
                for name, array in batch.columns.items():
                    columns[name].update(array)
            return DataProfile(source=partition.source, format=reader.format, header=reader.names, rows=reader.rows,
                               columns=columns, sha256=reader.sha256, bytes=reader.bytes_read)
    names = header(partition.source, partition.format)
    columns = {name: ColumnProfile(name) for name in names}
    rows = 0
    fingerprint = images.Fingerprint(partition.source) if partition.format == "images" else None
    read = (images.batches(partition.images, partition.image_shape, BadRows(max_bad_rows), fingerprint, step)
            if fingerprint is not None and partition.image_shape else batches(partition, step, BadRows(max_bad_rows)))
    for batch in read:
        rows += batch.num_rows
        for name, array in batch.columns.items():
            columns[name].update(array)
    if fingerprint is not None:
        return DataProfile(source=partition.source, format=partition.format, header=names, rows=rows,
                           columns=columns, sha256=images.listing_sha256(fingerprint.listing), bytes=fingerprint.bytes,
                           listing=fingerprint.listing)
    return DataProfile(source=partition.source, format=partition.format, header=names, rows=rows, columns=columns,
                       sha256="", bytes=partition.end - partition.start)


def merged(profiles: list[DataProfile], source: str) -> DataProfile:
    """The partitions' profiles as the source's, in partition order. Every file must have the first one's columns;
    a source without rows is an error. The digest of several files is that of their `sha256sum` listing."""
    first = profiles[0]
    for other in profiles[1:]:
        if other.header != first.header:
            raise DataError(f"{other.source}: columns ({preview(other.header)}) differ from those of "
                            f"{first.source} ({preview(first.header)})")
        for name, column in other.columns.items():
            first.columns[name].merge(column)
        first.rows += other.rows
    files = list(dict.fromkeys(p.source for p in profiles))
    if first.format == "images" and len(profiles) > 1:  # runs of one folder's images: their listings in order
        first.sha256 = images.listing_sha256([line for p in profiles for line in p.listing])
        first.bytes = sum(p.bytes for p in profiles)
    elif len(profiles) > 1:
        whole = {p.source: p.sha256 for p in profiles if p.sha256}
        digests = {file: whole.get(file) or file_sha256(file) for file in files}
        first.sha256 = digests[files[0]] if len(files) == 1 else hashlib.sha256(
            "".join(f"{digests[f]}  {f}\n" for f in files).encode()).hexdigest()
        first.bytes = sum(file_size(f) for f in files)
    first.source = source
    if first.rows == 0:
        what = {"csv": "the CSV has a header but no data rows", "parquet": "the Parquet file has no rows",
                "jsonl": "the JSON-lines file has no rows", "tfrecord": "the TFRecord file has no records",
                "images": "no image in the folder decodes"}[first.format]
        raise DataError(f"{source}: {what}")
    return first
