"""Transform: TFT's analyze phase without TFT — the preprocessing of every served feature, adapted on
the train split and built from the schema.

Numeric features get Normalization's mean and variance (NaN-aware), or Discretization's quantile
boundaries when `transform.discretize` asks; categorical ones a StringLookup/IntegerLookup vocabulary
(the schema's domain when it lists one, else the most frequent train values, adapted by the Keras
layer itself); the label its classes (classification) or mean and deviation (regression). The apply
phase lives inside the model, which rebuilds its preprocessing layers from this state
(tasks.models.assemble).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tasks.artifacts.base import Output
from tasks.artifacts.examples import Examples
from tasks.artifacts.schema import Schema
from tasks.artifacts.transform import PREPROCESSING_FILE, TransformProperties
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.features import MISSING_INT, FeatureSpec, LabelSpec, Preprocessing, load_arrays, plan_features
from tasks.schema import domain_values, feature_map
from tasks.step_config import TransformSections

log = logging.getLogger(__name__)


class TransformError(BadInputError):
    """The examples cannot be analysed as the config asks; one line naming the column at fault."""


def run(ctx: StepContext, config: TransformSections, *, examples: Examples, schema: Schema,
        transform: Output[TransformProperties]) -> None:
    schema_proto = schema.schema()
    types = {c.name: c.type for c in examples.properties.columns}
    label_column = examples.properties.label_column
    planned = plan_features(schema_proto, types, label_column, config.transform.feature_groups,
                            config.transform.discretize)
    train_files = examples.split_files("train")
    raw_labels = _label_column(train_files, label_column, types[label_column])
    label = _label_spec(config, label_column, types[label_column], raw_labels, feature_map(schema_proto))
    inputs, _ = load_arrays(train_files, planned, label)
    declared = feature_map(schema_proto)
    features = [_adapt(f, inputs[f.name], config, declared) for f in planned]
    preprocessing = Preprocessing(features=features, label=label, num_examples=len(raw_labels))

    (transform.dir / PREPROCESSING_FILE).write_text(preprocessing.model_dump_json(indent=1))
    transform.properties = TransformProperties(num_examples=len(raw_labels), served_features=[f.name for f in features],
                                               feature_kinds={f.name: f.kind for f in features})
    log.info("transform: %d served features (%s) over %d train examples -> %s", len(features),
             ", ".join(f"{f.name}:{f.kind}" for f in features), len(raw_labels), transform.uri)


def _label_column(files: list[str], column: str, value_type: str) -> np.ndarray:
    import tensorflow as tf

    dtype = {"float": tf.float32, "string": tf.string}.get(value_type, tf.int64)
    spec = {column: tf.io.FixedLenFeature([], dtype)}
    from common.storage import local_files

    data = tf.data.TFRecordDataset(local_files(files), compression_type="GZIP").batch(4096)
    chunks = [batch[column] for batch in data.map(lambda r: tf.io.parse_example(r, spec)).as_numpy_iterator()]
    values = np.concatenate(chunks) if chunks else np.zeros([0])
    return np.array([v.decode() for v in values], dtype=object) if value_type == "string" else values


def _label_spec(config: TransformSections, column: str, value_type: str, values: np.ndarray,
                declared: dict[str, Any]) -> LabelSpec:
    if config.task.type == "regression":
        if value_type not in ("int", "float"):
            raise TransformError(f"label column {column!r} holds {value_type} values; regression needs numbers "
                                 f"(task.type: classification for classes)")
        std = float(values.astype(np.float64).std())
        return LabelSpec(column=column, value_type=value_type, task="regression",
                         mean=float(values.astype(np.float64).mean()), std=std if std > 0 else 1.0)
    if value_type == "float":
        raise TransformError(f"label column {column!r} holds floats; classification needs string, integer or "
                             f"boolean labels (task.type: regression for numbers)")
    seen = sorted({bool(v) if value_type == "bool" else v.item() if hasattr(v, "item") else v for v in values})
    if config.task.classes is not None:
        classes = [_as_label_type(c, value_type, column) for c in config.task.classes]
    elif column in declared and domain_values(declared[column]):
        classes = [_as_label_type(c, value_type, column) for c in domain_values(declared[column])]
    else:
        classes = seen
    unknown = [v for v in seen if v not in classes]
    if unknown:
        raise TransformError(f"label column {column!r} has values {unknown[:5]} that are not in the classes "
                             f"{classes[:10]} (task.classes or the schema's domain)")
    if len(classes) < 2:
        raise TransformError(f"label column {column!r} has only one class ({classes}); classification needs two")
    return LabelSpec(column=column, value_type=value_type, task="classification", classes=classes)


def _as_label_type(value: Any, value_type: str, column: str) -> Any:
    if value_type == "string" and isinstance(value, str):
        return value
    if value_type == "bool" and isinstance(value, bool):
        return value
    if value_type == "int" and not isinstance(value, bool):
        try:
            return int(value)
        except ValueError:
            pass
    raise TransformError(f"class {value!r} does not match label column {column!r}, which holds {value_type} "
                         f"values (quote string classes in the YAML: yes/no are booleans there)")


def _adapt(feature: FeatureSpec, values: np.ndarray, config: TransformSections, declared: dict[str, Any]) -> FeatureSpec:
    import tf_keras as keras

    if feature.kind in ("numeric", "vector"):
        numbers = values.astype(np.float64)
        bins = config.transform.discretize.get(feature.columns[0]) if feature.kind == "numeric" else None
        if bins:
            present = numbers[~np.isnan(numbers)].reshape(-1, 1)
            layer = keras.layers.Discretization(num_bins=bins)
            layer.adapt(present)
            return feature.model_copy(update={"bin_boundaries": [float(b) for b in layer.bin_boundaries]})
        with np.errstate(all="ignore"):  # an all-missing column has no mean: it is centred at 0
            mean = np.nan_to_num(np.nanmean(numbers.reshape(len(numbers), -1), axis=0))
            variance = np.nan_to_num(np.nanvar(numbers.reshape(len(numbers), -1), axis=0))
        return feature.model_copy(update={"mean": mean.tolist(), "variance": variance.tolist()})
    if feature.kind == "boolean":
        return feature
    domain = domain_values(declared[feature.columns[0]])
    if domain is not None:
        return feature.model_copy(update={"vocabulary": [str(v) for v in domain] if feature.kind == "string"
                                          else [int(v) for v in domain]})
    limit = config.transform.max_vocabulary
    if feature.kind == "string":
        present = values[values != b""]
        layer = keras.layers.StringLookup(max_tokens=limit + 1, num_oov_indices=1)
        layer.adapt(present if len(present) else np.array([b""]))
        vocabulary = [str(v) for v in layer.get_vocabulary()[1:] if v != ""]
    else:
        present = values[values != MISSING_INT]
        layer = keras.layers.IntegerLookup(max_tokens=limit + 1, num_oov_indices=1, oov_token=MISSING_INT)
        layer.adapt(present if len(present) else np.array([MISSING_INT]))
        vocabulary = [int(v) for v in layer.get_vocabulary()[1:] if v != MISSING_INT]
    return feature.model_copy(update={"vocabulary": vocabulary})
