"""The model's inputs: which served feature each column becomes, and how examples turn into them.

A served feature is what a client sends by name and what the model's first layers preprocess:

| kind      | from                                   | served as             | preprocessing in the model |
|-----------|----------------------------------------|-----------------------|----------------------------|
| numeric   | a FLOAT or (non-categorical) INT column | float32 `[batch]`     | Normalization, NaN -> mean; or Discretization |
| vector    | a `transform.feature_groups` group      | float32 `[batch, k]`  | Normalization per element, NaN -> mean |
| string    | a BYTES column                          | string `[batch]`      | one-hot over the vocabulary, OOV at 0 |
| integer   | an INT column with `is_categorical`     | int64 `[batch]`       | one-hot over the vocabulary, OOV at 0 |
| boolean   | an INT column with `bool_domain`        | bool `[batch]`        | 0/1 |
| image     | a BYTES column with `image_domain`      | float32 `[batch, h, w, c]` | pixels 0-255 scaled to [-1, 1], flattened |

Missing values: a numeric value is NaN (a client may send `NaN`), a string is "" (out of
vocabulary), a categorical integer is `MISSING_INT` (out of vocabulary), a boolean is false.

TensorFlow is imported inside the functions that need it, so the CLI can use the plain parts.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from tensorflow_metadata.proto.v0 import schema_pb2

from tasks.columns import ValueType, parse_value
from tasks.errors import BadInputError

FeatureKind = Literal["numeric", "vector", "string", "integer", "boolean", "image"]
MISSING_INT = -(2**63)  # int64 min: never a real category
_DTYPES = {"numeric": "float32", "vector": "float32", "string": "string", "integer": "int64", "boolean": "bool",
           "image": "float32"}
_SERVED_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
READ_BATCH_ROWS = 4096  # rows per Arrow batch read from a shard
SHUFFLE_WINDOW = 16_384  # rows shuffled together
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of a split's data that training may keep in memory (data.memory_budget)


class FeatureError(BadInputError):
    """The columns, schema and transform settings do not make a model input; one line naming the column."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FeatureSpec(_Frozen):
    name: str  # the served input's name
    kind: FeatureKind
    columns: list[str]  # source CSV columns (several for a vector)
    column_types: list[ValueType]  # how those columns are stored in the Examples
    # Adapted on the train split by transform:
    mean: list[float] | None = None
    variance: list[float] | None = None
    bin_boundaries: list[float] | None = None
    vocabulary: list[str] | list[int] | None = None
    image_shape: list[int] | None = None  # an image's [height, width, channels]

    @property
    def dtype(self) -> str:
        return _DTYPES[self.kind]

    @property
    def shape(self) -> list[int]:
        """Per-example shape of the served input."""
        if self.kind == "image":
            return list(self.image_shape or [])
        return [len(self.columns)] if self.kind == "vector" else []


class LabelSpec(_Frozen):
    column: str
    value_type: ValueType
    task: Literal["classification", "regression"]
    classes: list[str] | list[int] | list[bool] | None = None
    mean: float | None = None  # regression: the model predicts in standardised units, then rescales
    std: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes or [])


class Preprocessing(_Frozen):
    """The transform's result: served features with their adapted state, and the label."""

    features: list[FeatureSpec]
    label: LabelSpec
    num_examples: int = 0

    def feature(self, name: str) -> FeatureSpec:
        return next(f for f in self.features if f.name == name)


def served_name(column: str) -> str:
    """A column name as a TF signature key: letters, digits, `_.-`, starting with a letter."""
    if _SERVED_NAME.fullmatch(column):
        return column
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", column)
    return cleaned if cleaned[:1].isalpha() else f"f_{cleaned}"


def plan_features(schema: schema_pb2.Schema, columns: dict[str, ValueType], label: str,
                  feature_groups: dict[str, list[str]], discretize: dict[str, int],
                  image_shapes: dict[str, list[int]] | None = None) -> list[FeatureSpec]:
    """The served features, in column order; groups take the place of their first column. `image_shapes`: the
    shape of each image column's pixels (as ingest stored them)."""
    from tasks.schema import feature_map

    declared = feature_map(schema)
    candidates = [name for name in columns if name != label and name in declared]
    grouped: dict[str, str] = {}
    for group, patterns in feature_groups.items():
        for pattern in patterns:
            matched = [c for c in candidates if fnmatch.fnmatchcase(c, pattern)]
            if not matched:
                raise FeatureError(f"transform.feature_groups.{group}: {pattern!r} matches no feature column")
            for column in matched:
                if grouped.setdefault(column, group) != group:
                    raise FeatureError(f"column {column!r} is in feature groups {grouped[column]!r} and {group!r}")
    features: list[FeatureSpec] = []
    emitted: set[str] = set()
    for column in candidates:
        group = grouped.get(column)
        if group is not None:
            if group not in emitted:
                members = [c for c in candidates if grouped.get(c) == group]
                for member in members:
                    if _kind(declared[member]) != "numeric":
                        raise FeatureError(f"transform.feature_groups.{group}: column {member!r} is not numeric "
                                           f"in the schema")
                features.append(FeatureSpec(name=served_name(group), kind="vector", columns=members,
                                            column_types=[columns[m] for m in members]))
                emitted.add(group)
            continue
        kind = _kind(declared[column])
        shape = (image_shapes or {}).get(column)
        if kind == "image" and (columns[column] != "image" or not shape):
            raise FeatureError(f"column {column!r} is an image in the schema but not in the examples (an image "
                               f"folder's images are the column 'image')")
        features.append(FeatureSpec(name=served_name(column), kind=kind, columns=[column],
                                    column_types=[columns[column]], image_shape=shape if kind == "image" else None))
    for column in discretize:
        spec = next((f for f in features if f.columns == [column]), None)
        if spec is None or spec.kind != "numeric":
            raise FeatureError(f"transform.discretize: {column!r} is not a numeric feature column")
    names = [f.name for f in features]
    for name in dict.fromkeys(n for n in names if names.count(n) > 1):
        sources = [f"group {f.name!r}" if f.kind == "vector" else f"column {f.columns[0]!r}"
                   for f in features if f.name == name]
        raise FeatureError(f"{' and '.join(sources)} map to the same served feature name {name!r}; rename one")
    if not features:
        raise FeatureError(f"no feature columns besides the label {label!r}")
    return features


def _kind(feature: schema_pb2.Feature) -> FeatureKind:
    if feature.type == schema_pb2.BYTES:
        return "image" if feature.HasField("image_domain") else "string"
    if feature.type == schema_pb2.INT:
        if feature.HasField("bool_domain"):
            return "boolean"
        if feature.HasField("int_domain") and feature.int_domain.is_categorical:
            return "integer"
        return "numeric"
    if feature.type == schema_pb2.FLOAT:
        return "numeric"
    raise FeatureError(f"column {feature.name!r} has no type in the schema")


# --- TensorFlow side: examples -> model inputs -------------------------------------------------------


_TF_DTYPES = {"float": "float32", "string": "string", "int": "int64", "bool": "int64",  # bool as int64 0/1
              "image": "uint8"}  # pixels [batch, h, w, c]


def image_shapes(features: Sequence[FeatureSpec]) -> dict[str, list[int]]:
    """The stored image columns' shapes."""
    return {f.columns[0]: list(f.image_shape or []) for f in features if f.kind == "image"}


def parse_spec(features: Sequence[FeatureSpec], label: LabelSpec | None) -> dict[str, ValueType]:
    """The stored columns the model's inputs (and the target) are made of, with their types."""
    spec = {c: t for f in features for c, t in zip(f.columns, f.column_types, strict=True)}
    if label is not None:
        spec[label.column] = label.value_type
    return spec


def column_arrays(batch: Any, columns: dict[str, ValueType], shapes: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """An Arrow record batch's columns as numpy arrays, missing values as the model's markers: NaN for a
    number, "" for a string, MISSING_INT for an integer or boolean (stored as 0/1). An image column (its
    shape in `shapes`) becomes uint8 [rows, height, width, channels]."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = {}
    for name, value_type in columns.items():
        column = batch.column(name)
        if value_type == "image":  # fixed-size values back to back in one buffer: a view, reshaped
            size = column.type.byte_width
            pixels = np.frombuffer(column.buffers()[1], np.uint8, count=len(column) * size, offset=column.offset * size)
            arrays[name] = pixels.reshape([len(column), *(shapes or {})[name]])
        elif value_type == "float":
            arrays[name] = pc.fill_null(pc.cast(column, pa.float32()), math.nan).to_numpy(zero_copy_only=False)
        elif value_type == "string":
            arrays[name] = pc.fill_null(column, "").to_numpy(zero_copy_only=False).astype(object)
        else:
            arrays[name] = pc.fill_null(pc.cast(column, pa.int64()), MISSING_INT).to_numpy(zero_copy_only=False)
    return arrays


def _columns_dataset(tf: Any, files: list[str], columns: dict[str, ValueType], interleave: int,
                     batch_rows: int = READ_BATCH_ROWS, shuffle_seed: int | None = None,
                     shapes: dict[str, list[int]] | None = None) -> Any:
    """Column batches of `batch_rows` rows of the Parquet shards (any fsspec URL), read by Arrow in bounded
    memory. With a seed, the rows of each window of SHUFFLE_WINDOW are permuted in numpy (another permutation
    on every pass): tf.data then moves whole batches, not rows, which is what makes streaming as fast as a
    split held in memory."""
    import collections
    import zlib

    import fsspec
    import numpy as np
    import pyarrow.parquet as pq

    from common.parquet import parquet_batches

    passes: collections.Counter[bytes] = collections.Counter()  # a file's passes: each is permuted anew

    def generate(path: bytes) -> Any:
        passes[path] += 1  # files are read in parallel: the seed comes from the file, not the call order
        rng = None if shuffle_seed is None else np.random.default_rng([shuffle_seed, zlib.crc32(path), passes[path]])
        window: list[dict[str, Any]] = []
        held = 0
        with fsspec.open(path.decode(), "rb") as handle:
            for batch in parquet_batches(pq.ParquetFile(handle), READ_BATCH_ROWS, columns=list(columns)):
                window.append(column_arrays(batch, columns, shapes))
                held += batch.num_rows
                if held >= SHUFFLE_WINDOW:
                    window, held = (yield from _emit(window, batch_rows, rng, keep_tail=True))
        yield from _emit(window, batch_rows, rng, keep_tail=False)

    signature = {name: tf.TensorSpec([None, *(shapes or {}).get(name, [])], _TF_DTYPES[value_type])
                 for name, value_type in columns.items()}
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda path: tf.data.Dataset.from_generator(generate, args=(path,), output_signature=signature),
        cycle_length=max(1, min(interleave, len(files))), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _emit(window: list[dict[str, Any]], batch_rows: int, rng: Any, keep_tail: bool) -> Any:
    """Yield the window's rows (permuted when `rng`) in batches of `batch_rows`; return the rows left over (fewer
    than a batch, when `keep_tail`) as the start of the next window, and their count."""
    import numpy as np

    if not window:
        return [], 0
    merged = {name: np.concatenate([part[name] for part in window]) for name in window[0]}
    rows = len(next(iter(merged.values())))
    order = rng.permutation(rows) if rng is not None else np.arange(rows)
    full = rows - rows % batch_rows if keep_tail else rows
    for start in range(0, full, batch_rows):
        chosen = order[start:start + batch_rows]
        yield {name: values[chosen] for name, values in merged.items()}
    if full == rows:
        return [], 0
    tail = order[full:]
    return [{name: values[tail] for name, values in merged.items()}], rows - full


def split_bytes(files: list[str]) -> int:
    """The uncompressed size of Parquet files' data (from their footers): what caching them in memory takes."""
    import fsspec
    import pyarrow.parquet as pq

    total = 0
    for file in files:
        with fsspec.open(file, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
            total += sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    return total


def _as_float(tf: Any, tensor: Any) -> Any:
    if tensor.dtype == tf.int64:
        return tf.where(tensor == MISSING_INT, math.nan, tf.cast(tensor, tf.float32))
    return tensor


def model_inputs(parsed: dict[str, Any], features: Sequence[FeatureSpec]) -> dict[str, Any]:
    """Parsed example columns [batch] -> served inputs ([batch] or [batch, k]), as the server receives them."""
    import tensorflow as tf

    inputs = {}
    for feature in features:
        columns = [parsed[c] for c in feature.columns]
        if feature.kind == "vector":
            inputs[feature.name] = tf.stack([_as_float(tf, c) for c in columns], axis=1)
        elif feature.kind == "numeric":
            inputs[feature.name] = _as_float(tf, columns[0])
        elif feature.kind == "boolean":
            inputs[feature.name] = tf.equal(columns[0], 1)
        elif feature.kind == "image":
            inputs[feature.name] = tf.cast(columns[0], tf.float32)
        else:
            inputs[feature.name] = columns[0]
    return inputs


def label_values(tf: Any, parsed: dict[str, Any], label: LabelSpec) -> Any:
    """The training target: a class index (int64, -1 for an unknown class) or a float32 value."""
    values = parsed[label.column]
    if label.task == "regression":
        return _as_float(tf, values)
    keys = [int(c) if isinstance(c, bool) else c for c in label.classes or []]
    key_dtype = tf.string if label.value_type == "string" else tf.int64
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, key_dtype), tf.range(len(keys), dtype=tf.int64)),
        default_value=-1)
    return table.lookup(values)


def dataset(files: list[str], features: Sequence[FeatureSpec], label: LabelSpec, batch_size: int,
            shuffle_seed: int | None, repeat: bool, memory_budget: int = DEFAULT_MEMORY_BUDGET,
            limit: int | None = None, worker: tuple[int, int] | None = None) -> Any:
    """Batches of (served inputs, target) from Parquet shards (paths or URLs): files interleaved when shuffling
    (read in order otherwise). A split whose data fits `memory_budget` bytes is kept in memory (`cache`) and
    shuffled row by row; a bigger one is streamed, shuffled in windows of SHUFFLE_WINDOW rows. `worker` (index, count) of a multi-worker group: each
    reads its own files when there are at least as many files as workers, else every worker reads all and
    keeps its share of the rows (tf.distribute's DATA sharding)."""
    import tensorflow as tf

    columns, shapes = parse_spec(features, label), image_shapes(features)
    policy = tf.data.experimental.AutoShardPolicy.DATA
    if worker is not None and worker[1] > 1 and len(files) >= worker[1]:
        files, policy = files[worker[0]::worker[1]], tf.data.experimental.AutoShardPolicy.OFF

    def to_model(parsed: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        return model_inputs(parsed, features), label_values(tf, parsed, label)

    interleave = 1 if shuffle_seed is None else 4
    if limit is None and not (memory_budget and split_bytes(files) <= memory_budget):
        # Streamed: batches made and shuffled in windows by the reader, every pass from the files.
        data = _columns_dataset(tf, files, columns, interleave, batch_size, shuffle_seed, shapes)
        data = data.repeat() if repeat else data
    else:  # held in memory (or the first `limit` rows): shuffled row by row, as the split is small
        data = _columns_dataset(tf, files, columns, interleave, shapes=shapes).unbatch()
        data = data.take(limit) if limit is not None else data.cache()
        if shuffle_seed is not None:
            data = data.shuffle(SHUFFLE_WINDOW, seed=shuffle_seed, reshuffle_each_iteration=True)
        data = (data.repeat() if repeat else data).batch(batch_size)
    data = data.map(to_model, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return data.prefetch(tf.data.AUTOTUNE).with_options(options)


def load_arrays(files: list[str], features: Sequence[FeatureSpec], label: LabelSpec,
                limit: int | None = None) -> tuple[dict[str, Any], Any]:
    """(served inputs as numpy arrays, targets) of a split, or of its first `limit` examples, in file order."""
    import numpy as np

    data = dataset(files, features, label, batch_size=1024, shuffle_seed=None, repeat=False, memory_budget=0,
                   limit=limit)
    parts: dict[str, list[Any]] = {f.name: [] for f in features}
    targets = []
    for inputs, target in data.as_numpy_iterator():
        for name, value in inputs.items():
            parts[name].append(value)
        targets.append(target)
    if not targets:
        return {f.name: np.zeros([0, *f.shape]) for f in features}, np.zeros([0])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, np.concatenate(targets)


# --- plain Python side: JSON instances for TF Serving's REST API ------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "tolist"):
        return _json_value(value.tolist())
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def json_instances(inputs: dict[str, Any], count: int | None = None) -> list[dict[str, Any]]:
    """Row-format instances (`{"feature": value, ...}` per example) from served-input arrays."""
    size = len(next(iter(inputs.values()))) if inputs else 0
    size = size if count is None else min(size, count)
    return [{name: _json_value(values[i]) for name, values in inputs.items()} for i in range(size)]


def instance_from_row(row: dict[str, Any], features: Sequence[FeatureSpec]) -> dict[str, Any]:
    """One row (column -> text as a CSV holds it; an image's pixels as bytes) as a REST instance, typed as the
    model's inputs expect."""
    import numpy as np

    instance: dict[str, Any] = {}
    for feature in features:
        if feature.kind == "image":
            pixels = np.frombuffer(row[feature.columns[0]], np.uint8).reshape(feature.shape)
            instance[feature.name] = pixels.astype(float).tolist()
        elif feature.kind in ("numeric", "vector"):
            values = [parse_value(row[c], "float") for c in feature.columns]
            values = [math.nan if v is None else v for v in values]
            instance[feature.name] = values if feature.kind == "vector" else values[0]
        elif feature.kind == "string":
            instance[feature.name] = parse_value(row[feature.columns[0]], "string") or ""
        elif feature.kind == "integer":
            value = parse_value(row[feature.columns[0]], "int")
            instance[feature.name] = MISSING_INT if value is None else value
        else:
            instance[feature.name] = bool(parse_value(row[feature.columns[0]], "bool"))
    return instance
