"""Transform: TFT's analyze phase without TFT — the preprocessing of every served feature, adapted on
the train split and built from the schema.

Every analyzer comes from one streamed pass over the train split's Parquet shards, in bounded memory
(`tasks.data.sketches`): numeric features get Normalization's mean and variance (missing values left
out), or Discretization's quantile boundaries (KLL) when `transform.discretize` asks; categorical ones a
vocabulary (the schema's domain when it lists one, else the most frequent train values, ties by
value); the label its classes (classification) or mean and deviation (regression). The apply
phase lives inside the model, which rebuilds its preprocessing layers from this state
(tasks.models.assemble).
"""

from __future__ import annotations

import logging
from typing import Any

from tasks.artifacts.base import Output
from tasks.artifacts.examples import Examples
from tasks.artifacts.schema import Schema
from tasks.artifacts.transform import PREPROCESSING_FILE, TransformProperties
from tasks.columns import DISTINCT_CAP, ValueType
from tasks.context import StepContext
from tasks.data.engine import Engine, engine_for
from tasks.data.sketches import ColumnSketch, sketch_files
from tasks.errors import BadInputError
from tasks.features import FeatureSpec, LabelSpec, Preprocessing, plan_features
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
    shapes = {c.name: c.shape for c in examples.properties.columns if c.shape}
    planned = plan_features(schema_proto, types, label_column, config.transform.feature_groups,
                            config.transform.discretize, shapes)
    with engine_for(config.data, "transform") as engine:
        sketches = _analyze(engine, examples, planned, label_column, types)
    label_sketch = sketches[label_column]
    label = _label_spec(config, label_column, types[label_column], label_sketch, feature_map(schema_proto))
    declared = feature_map(schema_proto)
    features = [_adapt(f, [sketches[c] for c in f.columns], config, declared) for f in planned]
    num_examples = label_sketch.present
    preprocessing = Preprocessing(features=features, label=label, num_examples=num_examples)

    (transform.dir / PREPROCESSING_FILE).write_text(preprocessing.model_dump_json(indent=1))
    transform.properties = TransformProperties(num_examples=num_examples, served_features=[f.name for f in features],
                                               feature_kinds={f.name: f.kind for f in features})
    log.info("transform: %d served features (%s) over %d train examples -> %s", len(features),
             ", ".join(f"{f.name}:{f.kind}" for f in features), num_examples, transform.uri)


def _analyze(engine: Engine, examples: Examples, planned: list[FeatureSpec], label: str,
             types: dict[str, ValueType]) -> dict[str, ColumnSketch]:
    """One streamed pass over the train split (a task per file on the engine): a sketch of every column a
    feature or the label reads. Rows without a label were dropped by ingest, so the label's count is the
    number of train examples."""
    columns = list(dict.fromkeys([c for f in planned for c in f.columns] + [label]))
    _, sketches = sketch_files(engine, examples.split_files("train"), {c: types[c] for c in columns})
    return sketches


def _label_spec(config: TransformSections, column: str, value_type: str, sketch: ColumnSketch,
                declared: dict[str, Any]) -> LabelSpec:
    if config.task.type == "regression":
        if value_type not in ("int", "float"):
            raise TransformError(f"label column {column!r} holds {value_type} values; regression needs numbers "
                                 f"(task.type: classification for classes)")
        return LabelSpec(column=column, value_type=value_type, task="regression",
                         mean=sketch.moments.mean, std=sketch.moments.std if sketch.moments.std > 0 else 1.0)
    if value_type == "float":
        raise TransformError(f"label column {column!r} holds floats; classification needs string, integer or "
                             f"boolean labels (task.type: regression for numbers)")
    if sketch.distinct is None:
        raise TransformError(f"label column {column!r} has more than {DISTINCT_CAP} distinct values: too many "
                             f"classes (task.type: regression for numbers)")
    seen = sorted(sketch.distinct)
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


def _adapt(feature: FeatureSpec, sketches: list[ColumnSketch], config: TransformSections,
           declared: dict[str, Any]) -> FeatureSpec:
    if feature.kind in ("numeric", "vector"):
        bins = config.transform.discretize.get(feature.columns[0]) if feature.kind == "numeric" else None
        if bins:
            return feature.model_copy(update={"bin_boundaries": _boundaries(sketches[0].quantile_boundaries(bins))})
        # An all-missing column has no mean: it is centred at 0 with variance 0, as NaN-aware numpy gave.
        return feature.model_copy(update={"mean": [s.moments.mean for s in sketches],
                                          "variance": [s.moments.variance for s in sketches]})
    if feature.kind in ("boolean", "image"):  # an image is scaled by a constant: pixels are 0-255
        return feature
    domain = domain_values(declared[feature.columns[0]])
    if domain is not None:
        return feature.model_copy(update={"vocabulary": [str(v) for v in domain] if feature.kind == "string"
                                          else [int(v) for v in domain]})
    top = [value for value, _ in sketches[0].top(config.transform.max_vocabulary) if value != ""]
    vocabulary = top if feature.kind == "string" else [int(v) for v in top]
    return feature.model_copy(update={"vocabulary": vocabulary})


def _boundaries(quantiles: list[float]) -> list[float]:
    """Strictly increasing boundaries (a heavily repeated value yields equal quantiles)."""
    return sorted(set(quantiles))
