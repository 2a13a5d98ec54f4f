"""Read a data source as Arrow record batches, in bounded memory, from any fsspec URL.

Formats (by `data.format`, else by the file's suffix): CSV (`.csv`, gzip/bz2/xz/zstd-compressed too),
Parquet (`.parquet`, `.pq`), JSON lines (`.jsonl`, `.ndjson`, `.json`) and TFRecord of `tf.train.Example`
(`.tfrecord`, `.tfrecords`; `.gz` for GZIP records; tasks.data.tfrecord). A CSV's columns come as
stripped text, typed later by kiln's rules (`tasks.data.values`); Parquet and JSON columns keep their
own types. Every error is one line naming the file, and the row where there is one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import fsspec
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from common.parquet import parquet_batches
from tasks.columns import CsvError
from tasks.data import tfrecord, values

Format = Literal["csv", "parquet", "jsonl", "tfrecord", "images"]
FORMATS: tuple[Format, ...] = ("csv", "parquet", "jsonl", "tfrecord", "images")  # images: a folder (tasks.data.images)
_SUFFIXES: dict[str, Format] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                                ".ndjson": "jsonl", ".json": "jsonl", ".tfrecord": "tfrecord",
                                ".tfrecords": "tfrecord"}
TABULAR_SUFFIXES = tuple(_SUFFIXES)
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
BLOCK_BYTES = 8 << 20  # a CSV/JSON block: tens of thousands of rows, a few MB of Arrow arrays
PARQUET_BATCH_ROWS = 65_536
PROGRESS_SECONDS = 10.0

log = logging.getLogger(__name__)


class DataError(CsvError):
    """A data source that cannot be read as a table; one line naming the file (and row)."""


@dataclass(frozen=True)
class Batch:
    columns: dict[str, pa.Array]  # CSV: stripped text; Parquet/JSON: typed
    first_row: int  # the 1-based data row number of the batch's first row

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def source_format(source: str, declared: str | None = None) -> Format:
    if declared:
        if declared not in FORMATS:
            raise DataError(f"data.format {declared!r}: use one of {', '.join(FORMATS)}")
        return declared  # type: ignore[return-value]
    name = source.rsplit("/", 1)[-1].lower()
    for suffix in COMPRESSED_SUFFIXES:
        name = name.removesuffix(suffix)
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    raise DataError(f"{source}: cannot tell the format from the name; set data.format ({', '.join(FORMATS)})")


class _CountingReader(io.RawIOBase):
    """Reads through to `inner`, counting and hashing every byte: one pass parses and fingerprints."""

    def __init__(self, inner: IO[bytes]):
        self.inner = inner
        self.digest = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.inner.read(len(buffer))
        self.digest.update(chunk)
        self.bytes += len(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


class Reader:
    """One streamed pass over a source: `names`, then `Batch`es; `sha256` and `bytes_read` once done.

    Progress (rows, bytes, rows/s) goes to the log every PROGRESS_SECONDS, naming `step`.
    """

    def __init__(self, source: str, format: str | None = None, step: str = "read", max_bad_rows: int = 0):
        self.source, self.step = source, step
        self.rows = 0
        self.bad_rows = BadRows(max_bad_rows)
        self._started = self._reported = time.monotonic()
        try:
            self._file = fsspec.open(source, "rb", compression="infer").open()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise DataError(f"data source not found: {source}") from None
        try:
            self.format = source_format(source, format)
        except DataError:
            self._file.close()
            raise
        self._counting = _CountingReader(self._file)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        if self.format == "images":
            raise DataError(f"{self.source}: an image folder is read by tasks.data.images, not as one file")
        if self.format == "tfrecord":
            from common.storage import local_files

            try:
                self.names, self._records = tfrecord.batches(local_files([self.source])[0], self.source)
            except (tfrecord.TFRecordError, tf_errors()) as exc:
                raise self._error(exc) from None
        elif self.format == "parquet":
            try:
                self._parquet = pq.ParquetFile(self._file)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{self.source}: not a readable Parquet file ({_first_line(exc)})") from None
            self.names = list(self._parquet.schema_arrow.names)
        elif self.format == "jsonl":
            self._stream = self._guard(lambda: pa_json.open_json(
                self._counting, read_options=pa_json.ReadOptions(block_size=BLOCK_BYTES)))
            self.names = list(self._stream.schema.names)
        else:
            header = self._csv_header()  # as written: Arrow's column_types match names unstripped
            self.names = [name.strip() for name in header]
            _check_names(self.source, self.names)
            self._stream = self._guard(lambda: pa_csv.open_csv(
                self._counting, read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES),
                parse_options=self.bad_rows.parse_options(),
                convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()),
                                                      strings_can_be_null=False, quoted_strings_can_be_null=False)))
        _check_names(self.source, self.names)

    def _csv_header(self) -> list[str]:
        with fsspec.open(self.source, "rb", compression="infer") as raw:
            wrapper = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            try:
                header = next((row for row in csv.reader(wrapper) if row), None)
            except UnicodeDecodeError:
                raise DataError(f"{self.source}: not UTF-8 text (is it a CSV? set data.format)") from None
            except csv.Error as exc:
                raise DataError(f"{self.source} line 1: {exc}") from None
        if not header or not any(h.strip() for h in header):
            raise DataError(f"{self.source}: the CSV is empty (no header row)")
        return header

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def sha256(self) -> str:
        """The file's digest (of its bytes as stored, before decompression), once the pass is done."""
        if self.format in ("parquet", "tfrecord"):
            return file_sha256(self.source)
        return self._counting.digest.hexdigest()

    @property
    def bytes_read(self) -> int:
        if self.format == "parquet":  # read by row group and footer, not front to back: its size
            return self._file.size
        if self.format == "tfrecord":  # TensorFlow reads the file itself: the whole of it once the pass is done
            return file_size(self.source)
        return self._counting.bytes

    def _guard(self, call: Any) -> Any:
        try:
            return call()
        except pa.ArrowInvalid as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> DataError:
        message = _first_line(exc)
        if self.format == "tfrecord":
            if isinstance(exc, tfrecord.TFRecordError):
                return DataError(f"{self.source} {message}" if message.startswith("record") else
                                 f"{self.source}: {message}")
            return DataError(f"{self.source}: truncated or corrupt TFRecord file ({message})")
        if "invalid UTF8" in message or "UTF8" in message:
            return DataError(f"{self.source}: not UTF-8 text (is it a CSV? set data.format)")
        if self.format == "csv" and "Expected" in message and "columns" in message:
            return DataError(self._ragged_row() + self.bad_rows.over_limit())
        return DataError(f"{self.source}: {message}")

    def _ragged_row(self) -> str:
        """Arrow names the row's text, not its line: find the line with the stdlib reader (error path only)."""
        with fsspec.open(self.source, "rt", compression="infer", encoding="utf-8-sig", newline="") as text:
            rows = csv.reader(text)
            width = len(next(rows))
            for fields in rows:
                if fields and len(fields) != width:
                    return f"{self.source} line {rows.line_num}: {len(fields)} fields, the header has {width}"
        return f"{self.source}: a row does not have the header's {width} fields"

    def __iter__(self) -> Iterator[Batch]:
        if self.format == "tfrecord":
            batches: Iterator[Any] = (pa.RecordBatch.from_pydict(columns) for columns in self._records)
        elif self.format == "parquet":
            batches = parquet_batches(self._parquet, PARQUET_BATCH_ROWS)
        else:
            batches = iter(self._stream)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowInvalid, OSError, tfrecord.TFRecordError, tf_errors()) as exc:
                raise self._error(exc) from None
            if batch is None:
                self._progress(final=True)
                return
            if batch.num_rows == 0:
                continue
            columns = {name: self._column(name, batch.column(i)) for i, name in enumerate(self.names)}
            yield Batch(columns=columns, first_row=self.rows + 1)
            self.rows += batch.num_rows
            self._progress()

    def _column(self, name: str, array: pa.Array) -> pa.Array:
        if self.format == "csv":
            return values.strip(array)
        try:
            if values.stored_type(array.type) == "image":
                raise TypeError(str(array.type))
        except TypeError:
            raise DataError(f"{self.source}: column {name!r} holds {array.type} values; kiln reads one number, "
                            f"boolean or string per column") from None
        return array

    def _progress(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._reported < PROGRESS_SECONDS:
            return
        self._reported = now
        seconds = max(now - self._started, 1e-9)
        log.info("%s: %s%s rows, %.1f MB read, %.0f rows/s", self.step, "done, " if final else "",
                 f"{self.rows:,}", self.bytes_read / 1e6, self.rows / seconds)


class BadRows:
    """CSV rows without the header's number of fields: skipped and counted up to `limit` (data.max_bad_rows), an
    error past it. Arrow does not know a skipped row's line (values may hold line breaks): it keeps its text."""

    SHOWN = 3

    def __init__(self, limit: int):
        self.limit, self.count, self.examples = limit, 0, []

    def parse_options(self) -> pa_csv.ParseOptions:
        if not self.limit:
            return pa_csv.ParseOptions(newlines_in_values=True)
        return pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=self._handle)

    def _handle(self, row: Any) -> str:
        self.count += 1
        if len(self.examples) < self.SHOWN:
            self.examples.append(f"{row.actual_columns} fields: {row.text[:60]!r}")
        return "skip" if self.count <= self.limit else "error"

    def over_limit(self) -> str:
        return f" (more than data.max_bad_rows: {self.limit})" if self.limit else ""

    def describe(self) -> str:
        return f"{self.count} rows skipped without the header's fields (" + "; ".join(self.examples) + ")"


def tf_errors() -> type[Exception]:
    """TensorFlow's error base (a truncated record), without importing TensorFlow for the other formats."""
    import sys

    errors = sys.modules.get("tensorflow.python.framework.errors_impl")
    return errors.OpError if errors is not None else tfrecord.TFRecordError


def _check_names(source: str, names: list[str]) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or "" in names:
        raise DataError(f"{source}: header has duplicate or empty column names {duplicates or ['']}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def file_size(source: str) -> int:
    fs, path = fsspec.core.url_to_fs(source)
    return fs.size(path)


def file_sha256(source: str) -> str:
    digest = hashlib.sha256()
    with fsspec.open(source, "rb") as handle:
        while chunk := handle.read(BLOCK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
