"""Mergeable statistics of one column, updated an Arrow batch at a time in bounded memory.

Exact where that costs nothing (counts, min, max, mean and variance merged by Chan et al.'s formula,
zeros, string lengths, the distinct values while there are at most DISTINCT_CAP); sketched beyond
(Apache DataSketches: KLL quantiles, frequent items for top values and vocabularies, HLL distinct
counts). Every part merges, so partial statistics of shards or workers combine into one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.columns import DISTINCT_CAP, ValueType
from tasks.data.moments import Moments

KLL_K = 400  # normalized rank error about 0.7 % (DataSketches' table for k=400)
FREQUENT_LG_K = 14  # frequent-items map of 2^14: exact counts while a column has fewer than ~12k distinct values
HLL_LG_K = 12  # HLL distinct-count error about 1.6 %


_SKETCH_KINDS = {"quantiles": ds.kll_doubles_sketch, "frequent": ds.frequent_strings_sketch, "hll": ds.hll_sketch}


def _kll() -> Any:
    return ds.kll_doubles_sketch(KLL_K)


@dataclass
class ColumnSketch:
    """What a pass saw of one typed column (bool, int, float, string or image; null = missing)."""

    value_type: ValueType
    present: int = 0
    missing: int = 0
    moments: Moments = field(default_factory=Moments)  # of the numbers (ints, floats, booleans as 0/1)
    zeros: int = 0
    quantiles: Any = field(default_factory=_kll)
    frequent: Any = field(default_factory=lambda: ds.frequent_strings_sketch(FREQUENT_LG_K))
    hll: Any = field(default_factory=lambda: ds.hll_sketch(HLL_LG_K))
    distinct: set[Any] | None = field(default_factory=set)  # None once past DISTINCT_CAP
    total_length: int = 0  # of the strings (UTF-8 characters) or images (bytes)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (to move between processes of a Dask cluster): the sketches as their own bytes."""
        state = dict(self.__dict__)
        for name in _SKETCH_KINDS:
            sketch = state[name]
            state[name] = sketch.serialize_updatable() if name == "hll" else sketch.serialize()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, kind in _SKETCH_KINDS.items():
            state[name] = kind.deserialize(state[name])
        self.__dict__.update(state)

    @property
    def numeric(self) -> bool:
        return self.value_type not in ("string", "image")

    def update(self, array: pa.Array) -> None:
        if pa.types.is_floating(array.type):
            array = pc.if_else(pc.is_nan(array), pa.nulls(len(array), array.type), array)
        present = array.drop_null() if array.null_count else array
        self.present += len(present)
        self.missing += len(array) - len(present)
        if not len(present):
            return
        if self.value_type == "string" or pa.types.is_integer(present.type) or pa.types.is_boolean(present.type):
            self._update_items(present)
        if self.numeric:
            self._update_numbers(pc.cast(present, pa.float64()).to_numpy(zero_copy_only=False))
        elif self.value_type == "image":  # only counted: pixels have no values to rank
            self.total_length += len(present) * present.type.byte_width
        else:
            self.total_length += int(pc.sum(pc.utf8_length(present)).as_py() or 0)

    def _update_items(self, present: pa.Array) -> None:
        counts = pc.value_counts(present)
        items, numbers = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
        for item, number in zip(items, numbers, strict=True):
            text = str(item)
            self.frequent.update(text, number)
            self.hll.update(text)
        if self.distinct is not None:
            self.distinct.update(items)
            if len(self.distinct) > DISTINCT_CAP:
                self.distinct = None

    def _update_numbers(self, numbers: np.ndarray) -> None:
        self.moments.add(numbers)
        self.zeros += int((numbers == 0).sum())
        self.quantiles.update(np.require(numbers, np.float64, ["C", "W"]))  # the binding takes writable arrays only

    def merge(self, other: ColumnSketch) -> None:
        """Add what `other` saw (of the same column, elsewhere) to this one."""
        if other.moments.count:
            self.moments.merge(other.moments)
            self.zeros += other.zeros
            self.quantiles.merge(other.quantiles)
        self.present += other.present
        self.missing += other.missing
        self.total_length += other.total_length
        self.frequent.merge(other.frequent)
        union = ds.hll_union(HLL_LG_K)
        union.update(self.hll)
        union.update(other.hll)
        self.hll = union.get_result()
        if self.distinct is not None and other.distinct is not None:
            self.distinct |= other.distinct
            if len(self.distinct) > DISTINCT_CAP:
                self.distinct = None
        else:
            self.distinct = None

    @property
    def unique(self) -> int:
        """Distinct values: exact up to DISTINCT_CAP, an HLL estimate beyond."""
        return len(self.distinct) if self.distinct is not None else round(self.hll.get_estimate())

    def top(self, k: int) -> list[tuple[str, int]]:
        """The k most frequent values (as text) with their counts, most frequent first, ties by value."""
        items = self.frequent.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_NEGATIVES)
        ranked = sorted(((item, int(estimate)) for item, estimate, _, _ in items), key=lambda p: (-p[1], p[0]))
        return ranked[:k]

    def quantile_boundaries(self, bins: int) -> list[float]:
        """The bins-1 inner boundaries that cut the values into equally populated bins (Discretization's)."""
        if not self.moments.count:
            return []
        ranks = [i / bins for i in range(1, bins)]
        return [float(b) for b in self.quantiles.get_quantiles(ranks)]

    @property
    def median(self) -> float:
        return float(self.quantiles.get_quantile(0.5)) if self.moments.count else 0.0

    def equal_width_histogram(self, buckets: int) -> list[tuple[float, float, float]]:
        """(low, high, count) of `buckets` equal-width buckets from min to max, counted from the KLL sketch."""
        m = self.moments
        if not m.count:
            return []
        if m.maximum == m.minimum:
            return [(m.minimum, m.maximum, float(m.count))]
        edges = np.linspace(m.minimum, m.maximum, buckets + 1)
        # get_cdf gives the share of values < each split point (the last entry: all of them)
        shares = np.asarray(self.quantiles.get_cdf(edges[1:-1].tolist()), dtype=np.float64)
        cumulative = np.concatenate([[0.0], shares[:-1], [1.0]]) * self.moments.count
        counts = np.diff(cumulative)
        return [(float(lo), float(hi), float(n)) for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)]


def sketch_file(file: str, types: dict[str, ValueType]) -> tuple[int, dict[str, ColumnSketch]]:
    """(rows, a sketch of each column in `types`) of one Parquet file (a path or URL), streamed in batches."""
    import fsspec
    import pyarrow.parquet as pq

    from common.parquet import parquet_batches

    sketches = {name: ColumnSketch(value_type) for name, value_type in types.items()}
    rows = 0
    with fsspec.open(file, "rb") as handle:
        for batch in parquet_batches(pq.ParquetFile(handle), 65_536, columns=list(types)):
            rows += batch.num_rows
            for name, sketch in sketches.items():
                sketch.update(batch.column(name))
    return rows, sketches


def sketch_files(engine: Any, files: list[str], types: dict[str, ValueType]) -> tuple[int, dict[str, ColumnSketch]]:
    """The files' sketches, one task per file on `engine` (tasks.data.engine), merged in file order."""
    parts = engine.map(sketch_file, files, types)
    rows, merged = parts[0]
    for more, sketches in parts[1:]:
        rows += more
        for name, sketch in sketches.items():
            merged[name].merge(sketch)
    return rows, merged
