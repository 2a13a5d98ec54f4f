"""CSV columns: what type each value is, and a streamed profile of a whole file.

One set of rules for `kiln init` (which writes the schema) and for ingest (which writes the
examples), so both read a file the same way:

* an empty field is a missing value, and so is `nan`/`NaN` (in any column, as pandas reads it);
* `true`/`false` (any case) are booleans, `[+-]digits` integers, other finite numbers floats;
* a column's type is the narrowest that holds all its values: bool, int, float (ints widen to
  floats), else string.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import fsspec

from tasks.errors import BadInputError

ValueType = Literal["bool", "int", "float", "string"]
VALUE_TYPES: tuple[ValueType, ...] = ("bool", "int", "float", "string")
_INT = re.compile(r"[+-]?\d+")
_BOOLS = {"true": True, "false": False}
# Distinct values kept per column; beyond this a column is "high-cardinality" and only counted.
DISTINCT_CAP = 1000


class CsvError(BadInputError):
    """A CSV that cannot be read as a table; one line naming the file, line or column."""


def value_type(text: str) -> ValueType | None:
    """The type of one field (None = missing)."""
    text = text.strip()
    if not text:
        return None
    if text.lower() in _BOOLS:
        return "bool"
    if _INT.fullmatch(text):
        return "int"
    try:
        number = float(text)
    except ValueError:
        return "string"
    if math.isnan(number):
        return None
    return "float" if math.isfinite(number) else "string"


def widen(current: ValueType | None, new: ValueType | None) -> ValueType | None:
    """The narrowest type holding both."""
    if current is None or current == new:
        return new if current is None else current
    if new is None:
        return current
    if {current, new} == {"int", "float"}:
        return "float"
    return "string"


def holds(wider: ValueType, narrower: ValueType) -> bool:
    """Whether every value of type `narrower` can be stored as `wider` without loss."""
    return wider == narrower or wider == "string" or (wider == "float" and narrower in ("int", "bool")) \
        or (wider == "int" and narrower == "bool")


def parse_value(text: str, as_type: ValueType) -> Any:
    """A field as a Python value of `as_type` (None when missing); the caller checked `holds`."""
    text = text.strip()
    kind = value_type(text)
    if kind is None:
        return None
    if as_type == "string":
        return text
    if kind == "bool":
        value = _BOOLS[text.lower()]
        return float(value) if as_type == "float" else int(value) if as_type == "int" else value
    if as_type == "int":
        return int(text)
    return float(text)


@dataclass
class ColumnProfile:
    """What one pass over a column saw."""

    name: str
    type: ValueType | None = None
    present: int = 0
    missing: int = 0
    values: Counter[str] = field(default_factory=Counter)
    capped: bool = False  # more than DISTINCT_CAP distinct values
    minimum: float = math.inf
    maximum: float = -math.inf
    numbers: int = 0  # numeric values seen, with their running mean and M2 (Welford)
    mean: float = 0.0
    m2: float = 0.0

    def add(self, text: str) -> None:
        kind = value_type(text)
        if kind is None:
            self.missing += 1
            return
        self.present += 1
        self.type = widen(self.type, kind)
        text = text.strip()
        if text in self.values or len(self.values) < DISTINCT_CAP:
            self.values[text] += 1
        else:
            self.capped = True
        if kind in ("int", "float"):
            number = float(text)
            self.minimum = min(self.minimum, number)
            self.maximum = max(self.maximum, number)
            self.numbers += 1
            delta = number - self.mean
            self.mean += delta / self.numbers
            self.m2 += delta * (number - self.mean)

    @property
    def std(self) -> float:
        """Population standard deviation of the numeric values."""
        return math.sqrt(self.m2 / self.numbers) if self.numbers else math.nan

    @property
    def distinct(self) -> int | None:
        """Number of distinct values (as the column's type: `TRUE` and `true` are one), None beyond the cap."""
        return None if self.capped else len(self.typed_values())

    def typed_values(self) -> list[Any]:
        """The distinct values as the column's type, sorted (ints numerically)."""
        kind = self.type or "string"
        return sorted({parse_value(v, kind) for v in self.values})


@dataclass
class CsvProfile:
    source: str
    header: list[str]
    rows: int
    columns: dict[str, ColumnProfile]
    sha256: str


class _HashingReader(io.RawIOBase):
    """Reads through to `inner` and hashes every byte, so one pass both parses and fingerprints."""

    def __init__(self, inner: IO[bytes]):
        self.inner = inner
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.inner.read(len(buffer))
        self.digest.update(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


class CsvRows:
    """A CSV opened for one streamed pass: `header`, then (line number, fields) per data row.

    Rows are checked against the header's width; blank lines are skipped; errors are one line.
    `sha256` is the file's digest once every row has been read.
    """

    def __init__(self, source: str):
        self.source = source
        try:
            self._handle = fsspec.open(source, "rb").open()
        except (FileNotFoundError, IsADirectoryError):
            raise CsvError(f"data source not found: {source}") from None
        self._hashing = _HashingReader(self._handle)
        text = io.TextIOWrapper(io.BufferedReader(self._hashing), encoding="utf-8-sig", newline="")
        self._reader = csv.reader(text)
        header = self._guard(lambda: next(self._reader, None))
        if not header or not any(h.strip() for h in header):
            self.close()
            raise CsvError(f"{source}: the CSV is empty (no header row)")
        self.header = [h.strip() for h in header]
        duplicates = sorted({h for h in self.header if self.header.count(h) > 1})
        if duplicates or "" in self.header:
            self.close()
            raise CsvError(f"{source}: header has duplicate or empty column names {duplicates or ['']}")

    def __enter__(self) -> CsvRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    @property
    def sha256(self) -> str:
        return self._hashing.digest.hexdigest()

    def _guard(self, read: Any) -> Any:
        try:
            return read()
        except UnicodeDecodeError as exc:
            raise CsvError(f"{self.source}: not UTF-8 text (byte {exc.start} of a block)") from None
        except csv.Error as exc:
            raise CsvError(f"{self.source} line {self._reader.line_num}: {exc}") from None

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        width = len(self.header)
        while True:
            fields = self._guard(lambda: next(self._reader, None))
            if fields is None:
                return
            if not fields:
                continue  # a blank line
            if len(fields) != width:
                raise CsvError(f"{self.source} line {self._reader.line_num}: {len(fields)} fields, the header "
                               f"has {width}")
            yield self._reader.line_num, fields


def profile_csv(source: str) -> CsvProfile:
    """One streamed pass: each column's type, missing count, distinct values and range."""
    with CsvRows(source) as rows:
        columns = {name: ColumnProfile(name) for name in rows.header}
        ordered = [columns[name] for name in rows.header]
        count = 0
        for _, fields in rows:
            count += 1
            for column, text in zip(ordered, fields, strict=True):
                column.add(text)
        if count == 0:
            raise CsvError(f"{source}: the CSV has a header but no data rows")
        return CsvProfile(source=source, header=rows.header, rows=count, columns=columns, sha256=rows.sha256)


def preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"columns: {shown}, ..." if len(names) > limit else f"columns: {shown}"
