"""A source cut into partitions that engine workers read independently. A source is one file, a folder of
files or a glob; each file is cut on its own: byte ranges of an uncompressed CSV or JSON-lines file (newline-aligned: a row belongs to the range holding its first byte), row groups of a
Parquet file. A compressed text file and a TFRecord file cannot be cut: they are one partition.

A whole-file partition reads through `tasks.data.readers.Reader`, so the in-process default (one partition per
file) streams each file with its row numbers. In a byte range, rows are numbered from the
range's start, and errors name the range. A CSV cut in ranges must not hold line breaks inside quoted
values (as with Dask's and Spark's CSV readers); the ranges then parse with the Reader's settings.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from common.parquet import parquet_batches
from tasks.data import images as images_
from tasks.data import values
from tasks.data.readers import (
    COMPRESSED_SUFFIXES,
    TABULAR_SUFFIXES,
    BadRows,
    Batch,
    DataError,
    Format,
    Reader,
    file_size,
    source_format,
)

DEFAULT_PARTITION_BYTES = 64 << 20


@dataclass(frozen=True)
class Partition:
    source: str  # one file
    format: Format
    index: int
    count: int
    start: int = 0  # byte range [start, end) of a text file
    end: int = 0
    row_groups: tuple[int, ...] = ()  # of a Parquet file
    whole: bool = False  # the whole file, streamed by the Reader with its line numbers
    images: tuple[tuple[str, str], ...] = ()  # (file, class) of an image folder's partition (source: the folder)
    image_shape: images_.Shape | None = None

    @property
    def where(self) -> str:
        if self.format == "images":
            return f"{self.source} (images {self.images[0][0]} to {self.images[-1][0]})"
        if self.whole:
            return self.source
        if self.row_groups:
            return f"{self.source} (row groups {self.row_groups[0]}-{self.row_groups[-1]})"
        return f"{self.source} (bytes {self.start}-{self.end})"


def source_files(source: str) -> list[str]:
    """The files a source names: one file, every file under a folder (Spark's and Dask's output: names starting
    with `.` or `_` such as `_SUCCESS` left out), or a glob (`data/part-*.parquet`); sorted."""
    fs, path = fsspec.core.url_to_fs(source)
    if fs.isfile(path):
        return [source]
    if fs.isdir(path):
        found = [f for f in fs.find(path) if not f.rsplit("/", 1)[-1].startswith((".", "_"))]
    elif any(c in path for c in "*?["):
        found = [f for f in fs.glob(path) if fs.isfile(f)]
    else:
        raise DataError(f"data source not found: {source}")
    if not found:
        raise DataError(f"{source}: no data files there")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return sorted(f if protocol in ("file", "local") else f"{protocol}://{f}" for f in found)


def plan(source: str, format: str | None, partitions: int | None = None,
         partition_bytes: int = DEFAULT_PARTITION_BYTES, image_shape: images_.Shape | None = None) -> list[Partition]:
    """The partitions of `source` (each of its files): `partitions` per file, else one per `partition_bytes`; one
    per file when it cannot be cut. An image folder (data.format images, or a folder of PNG/JPEG files) is cut into
    runs of images, decoded to `image_shape`."""
    files = source_files(source)
    if is_image_folder(files, format):
        planned = _plan_images(source, files, partitions, partition_bytes, image_shape)
    else:
        planned = [p for file in files for p in _plan_file(file, format, partitions, partition_bytes)]
    return [replace(p, index=i, count=len(planned)) for i, p in enumerate(planned)]


def is_image_folder(files: list[str], format: str | None) -> bool:
    return format == "images" or (format is None and any(images_.is_image(f) for f in files)
                                  and not any(f.lower().endswith(tuple(TABULAR_SUFFIXES)) for f in files))


def _plan_images(source: str, files: list[str], partitions: int | None, partition_bytes: int,
                 shape: images_.Shape | None) -> list[Partition]:
    if shape is None:
        raise DataError(f"{source}: an image folder needs data.image (height, width, channels) to decode to")
    labelled = images_.labelled_files(source, files)
    if partitions is None:
        fs, path = fsspec.core.url_to_fs(source)
        partitions = max(1, math.ceil(fs.du(path) / partition_bytes))
    per = math.ceil(len(labelled) / min(partitions, len(labelled)))
    return [Partition(source, "images", 0, 0, images=tuple(labelled[start:start + per]), image_shape=shape)
            for start in range(0, len(labelled), per)]


def _plan_file(source: str, format: str | None, partitions: int | None, partition_bytes: int) -> list[Partition]:
    kind = source_format(source, format)
    size = file_size(source)
    wanted = partitions or max(1, math.ceil(size / partition_bytes))
    splittable = kind in ("csv", "jsonl") and not source.lower().endswith(COMPRESSED_SUFFIXES)
    if kind == "parquet" and wanted > 1:
        with fsspec.open(source, "rb") as handle:
            groups = pq.ParquetFile(handle).metadata.num_row_groups
        per = math.ceil(groups / min(wanted, max(groups, 1)))
        chunks = [tuple(range(start, min(start + per, groups))) for start in range(0, groups, per)]
        if len(chunks) > 1:
            return [Partition(source, kind, 0, 0, row_groups=chunk) for chunk in chunks]
    if not splittable or wanted == 1:
        return [Partition(source, kind, 0, 0, 0, size, whole=True)]
    step = math.ceil(size / wanted)
    return [Partition(source, kind, 0, 0, lo, min(lo + step, size)) for lo in range(0, size, step)]


def batches(partition: Partition, reader_step: str = "read", bad_rows: BadRows | None = None) -> Iterator[Batch]:
    """The partition's rows as batches (CSV: stripped text; other formats typed). Ragged CSV rows are skipped and
    counted in `bad_rows` up to its limit (data.max_bad_rows)."""
    bad_rows = bad_rows or BadRows(0)
    if partition.format == "images" and partition.image_shape is not None:
        yield from images_.batches(partition.images, partition.image_shape, bad_rows)
        return
    if partition.whole:
        with Reader(partition.source, partition.format, step=reader_step, max_bad_rows=bad_rows.limit) as reader:
            try:
                yield from reader
            finally:
                bad_rows.count, bad_rows.examples = reader.bad_rows.count, reader.bad_rows.examples
        return
    if partition.row_groups:
        with fsspec.open(partition.source, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            row = 1
            for batch in parquet_batches(parquet, 65_536, row_groups=partition.row_groups):
                yield Batch(dict(zip(batch.schema.names, batch.columns, strict=True)), row)
                row += batch.num_rows
        return
    yield from _text_range(partition, bad_rows)


def first_row(source: str, format: str | None, image_shape: images_.Shape | None = None) -> dict[str, object]:
    """The source's first row as a CSV would hold it: column -> text (an image's pixels: bytes)."""
    [first, *_] = plan(source, format, partitions=1, image_shape=image_shape)
    batch = next(batches(first, "first row"))
    return {name: array[0].as_py() if values.stored_type(array.type) == "image" else values.as_text(array[:1])[0].as_py()
            for name, array in batch.columns.items()}


def header(source: str, format: str | None) -> list[str]:
    if format == "images":
        return list(images_.COLUMNS)
    with Reader(source, format) as reader:
        return reader.names


def _line_range(partition: Partition) -> bytes:
    """The bytes of the rows whose first byte lies in [start, end)."""
    with fsspec.open(partition.source, "rb") as handle:
        start = partition.start
        if start > 0:
            handle.seek(start - 1)
            start += len(handle.readline()) - 1  # the rest of the row that began before the range
        if start >= partition.end:
            return b""
        handle.seek(start)
        data = handle.read(partition.end - start)
        if data and not data.endswith(b"\n"):
            data += handle.readline()  # the last row runs past the range's end
        return data


def _text_range(partition: Partition, bad_rows: BadRows) -> Iterator[Batch]:
    data = _line_range(partition)
    if partition.start == 0 and partition.format == "csv":  # the range holding the header row
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    if not data.strip():
        return
    names = header(partition.source, partition.format)
    try:
        if partition.format == "csv":
            table = pa_csv.read_csv(io.BytesIO(data), read_options=pa_csv.ReadOptions(column_names=names),
                                    parse_options=bad_rows.parse_options(), convert_options=pa_csv.ConvertOptions(
                                        column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False,
                                        quoted_strings_can_be_null=False))
        else:
            table = pa_json.read_json(io.BytesIO(data))
    except pa.ArrowInvalid as exc:
        raise DataError(f"{partition.where}: {str(exc).splitlines()[0]}{bad_rows.over_limit()}") from None
    row = 1
    for batch in table.to_batches(max_chunksize=65_536):
        if partition.format == "csv":
            columns = {name: values.strip(batch.column(i)) for i, name in enumerate(names)}
        else:  # a JSON range holds the keys its own lines have
            present = set(batch.schema.names)
            columns = {name: batch.column(name) if name in present else pa.nulls(batch.num_rows) for name in names}
        yield Batch(columns, row)
        row += batch.num_rows
