"""TFRecord files of `tf.train.Example` (ExampleGen's own output, and what many TF teams already hold) as
Arrow record batches.

The columns are the features of the first batch's records, typed by their value lists (float_list ->
float, int64_list -> int, bytes_list -> string as UTF-8); each batch is parsed by TensorFlow's
`parse_example` into sparse values, so a feature absent from a record is a missing value. kiln reads
one value per column: a record with several values for a feature is refused by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

RECORDS_PER_BATCH = 16_384
_KINDS = {"float_list": "float", "int64_list": "int", "bytes_list": "string"}


class TFRecordError(ValueError):
    """A record that cannot be read as one row; the reader names the file."""


def compression(source: str) -> str:
    return "GZIP" if source.lower().endswith(".gz") else ""


def _columns(first: list[bytes]) -> dict[str, str]:
    """Feature name -> kiln type, from the first records (in the order features first appear)."""
    import tensorflow as tf

    columns: dict[str, str] = {}
    for index, record in enumerate(first):
        try:
            example = tf.train.Example.FromString(record)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError: the record is not an Example
            raise TFRecordError(f"record {index + 1}: not a tf.train.Example") from None
        for name in sorted(example.features.feature):
            kind = example.features.feature[name].WhichOneof("kind")
            if kind is None:
                continue
            seen = columns.setdefault(name, _KINDS[kind])
            if seen != _KINDS[kind]:
                raise TFRecordError(f"record {index + 1}: feature {name!r} holds {_KINDS[kind]} values, earlier "
                                    f"records {seen}")
    if not columns:
        raise TFRecordError("no features in the first records")
    return columns


def batches(local_path: str, source: str) -> tuple[list[str], Iterator[dict[str, pa.Array]]]:
    """(column names, batches of typed columns) of one local TFRecord file."""
    import tensorflow as tf

    records = tf.data.TFRecordDataset(local_path, compression_type=compression(source)).batch(RECORDS_PER_BATCH)
    iterator = iter(records.as_numpy_iterator())
    first = next(iterator, None)
    if first is None:
        return [], iter(())
    columns = _columns(list(first[:1000]))
    dtypes = {"float": tf.float32, "int": tf.int64, "string": tf.string}
    spec = {name: tf.io.VarLenFeature(dtypes[kind]) for name, kind in columns.items()}

    def parse(chunk: Any, first_row: int) -> dict[str, pa.Array]:
        parsed = tf.io.parse_example(chunk, spec)
        return {name: _column(name, parsed[name], len(chunk), columns[name], first_row) for name in columns}

    def generate() -> Iterator[dict[str, pa.Array]]:
        row = 1
        chunk = first
        while chunk is not None:
            yield parse(chunk, row)
            row += len(chunk)
            chunk = next(iterator, None)

    return list(columns), generate()


def _column(name: str, sparse: Any, rows: int, kind: str, first_row: int) -> pa.Array:
    indices = sparse.indices.numpy()
    values = sparse.values.numpy()
    present = indices[:, 0]
    if len(present) and (np.diff(present) == 0).any():
        row = int(present[np.flatnonzero(np.diff(present) == 0)[0]])
        raise TFRecordError(f"record {first_row + row}: feature {name!r} has several values; kiln reads one value "
                            f"per column")
    mask = np.ones(rows, dtype=bool)
    mask[present] = False
    if kind == "string":
        try:
            texts = [v.decode("utf-8") for v in values]
        except UnicodeDecodeError:
            raise TFRecordError(f"feature {name!r} holds bytes that are not UTF-8 text") from None
        full = np.empty(rows, dtype=object)
        full[present] = texts
        return pa.array(full, pa.string(), mask=mask)
    full = np.zeros(rows, dtype=np.float64 if kind == "float" else np.int64)
    full[present] = values
    return pa.array(full, mask=mask)
