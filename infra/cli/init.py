"""`kiln init`: a data file (CSV, Parquet, JSON lines, TFRecord; a folder or glob of them) or an image folder in, a pipeline YAML and a curated-schema draft out.

One streamed pass profiles every column (`tasks.data.profile`), infers a TFDV schema with domains (the
user's to curate), picks the task from the label (strings, booleans or a few distinct integers ->
classification with the class list; other numbers -> regression) and writes both files atomically.
Default blessing thresholds are the trivial baselines a model must beat: the majority class's share
(accuracy) or the label's standard deviation (RMSE of always predicting the mean).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.columns import parse_value, preview
from tasks.config import ConfigError
from tasks.data.images import LABEL_COLUMN, labelled_files
from tasks.data.partitions import is_image_folder, source_files
from tasks.data.profile import ColumnProfile, DataProfile, profile_source
from tasks.features import served_name
from tasks.schema import MAX_DOMAIN_SIZE, ColumnSummary, infer_schema, schema_text

MAX_INTEGER_CLASSES = 20  # an integer label with at most this many values is a class label
MAX_IMAGE_SIDE = 224  # pixels: an image folder's default shape keeps its first image's aspect within this


class InitError(ConfigError):
    """`kiln init` cannot make a pipeline of this file; one line saying why."""


@dataclass(frozen=True)
class Inferred:
    name: str
    label: str
    task: str
    classes: list[Any] | None
    profile: DataProfile
    data_format: str | None
    yaml_path: Path
    schema_path: Path
    threshold: tuple[str, float]
    image_shape: tuple[int, int, int] | None = None  # an image folder's: what its images are decoded to


def pipeline_name(csv_path: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", csv_path.stem.lower()).strip("-_")
    return name if name[:1].isalnum() else f"p-{name}".rstrip("-") or "pipeline"


def infer(csv_path: Path, label: str | None, name: str | None, out_dir: Path, task: str | None,
          data_format: str | None = None) -> Inferred:
    image_shape = None
    if is_image_folder(source_files(str(csv_path)), data_format):
        data_format, label = "images", label or LABEL_COLUMN
        image_shape = first_image_shape(str(csv_path))
    if label is None:
        raise InitError(f"{csv_path}: --label names the column to predict")
    profile = profile_source(str(csv_path), data_format, step="kiln init", image_shape=image_shape)
    if label not in profile.columns:
        raise InitError(f"{csv_path}: label column {label!r} is not in the header ({preview(profile.header)})")
    column = profile.columns[label]
    if column.type is None:
        raise InitError(f"{csv_path}: label column {label!r} has no values")
    task = task or _task_of(column)
    classes = None
    if task == "classification":
        if column.type == "float":
            raise InitError(f"{csv_path}: label column {label!r} holds floats; use --task regression")
        if column.distinct is None:
            raise InitError(f"{csv_path}: label column {label!r} has more than 1000 distinct values; "
                            f"too many classes (use --task regression for numbers)")
        classes = column.typed_values()
        if len(classes) < 2:
            raise InitError(f"{csv_path}: label column {label!r} has only one value ({classes[0]!r}); "
                            f"classification needs at least two classes")
        counts: Counter[Any] = Counter()
        for text, count in column.values.items():  # `true` and `TRUE` are one class
            counts[parse_value(text, column.type)] += count
        majority = max(counts.values()) / column.present
        # round() first: 0.57 * 100 is 56.99999999999999 in binary floating point
        threshold = ("accuracy", math.floor(round(majority * 100, 6)) / 100)
    else:
        if column.type not in ("int", "float"):
            raise InitError(f"{csv_path}: label column {label!r} holds {column.type} values; regression needs "
                            f"numbers (use --task classification)")
        threshold = ("rmse", float(f"{column.std:.4g}"))
    name = name or pipeline_name(csv_path)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise InitError(f"--name {name!r}: use lowercase letters, digits, '-' and '_', starting with a letter or digit")
    return Inferred(name=name, label=label, task=task, classes=classes, profile=profile, data_format=data_format,
                    yaml_path=out_dir / f"{name}.yaml", schema_path=out_dir / f"{name}.schema.pbtxt",
                    threshold=threshold, image_shape=image_shape)


def first_image_shape(source: str) -> tuple[int, int, int]:
    """The first image's size, its long side at most MAX_IMAGE_SIDE, and 1 channel for a greyscale image, else 3:
    what the folder's images are decoded to unless the YAML says otherwise."""
    import fsspec
    from PIL import Image

    file, _ = labelled_files(source, source_files(source))[0]
    with fsspec.open(file, "rb") as handle, Image.open(handle) as image:
        width, height = image.size
        channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    scale = min(1.0, MAX_IMAGE_SIDE / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale)), channels


def _task_of(label: ColumnProfile) -> str:
    if label.type in ("string", "bool"):
        return "classification"
    if label.type == "int" and label.distinct is not None and label.distinct <= MAX_INTEGER_CLASSES:
        return "classification"
    return "regression"


def summaries(profile: DataProfile) -> list[ColumnSummary]:
    return [ColumnSummary(name=c.name, type=c.type, present=c.present, total=profile.rows,
                          distinct_values=None if c.capped else c.typed_values())
            for c in profile.columns.values()]


def yaml_text(inferred: Inferred, csv_path: Path, model: str) -> str:
    source = os.path.relpath(csv_path.resolve(), inferred.yaml_path.parent.resolve())
    metric, value = inferred.threshold
    why = ("the majority class's share: a model must beat always guessing it" if metric == "accuracy"
           else "the label's standard deviation: a model must beat always predicting the mean")
    change, change_why = ("{absolute: -0.01}", "no worse by more than a point") if metric == "accuracy" \
        else ("{relative: -0.05}", "at most 5 % worse")
    task = f"  type: {inferred.task}\n"
    if inferred.classes is not None:
        task += f"  classes: {json.dumps(inferred.classes)}\n"
    return (
        f"# Written by `kiln init {csv_path.name} --label {inferred.label}`; edit freely (unknown fields are "
        f"errors).\n"
        f"pipeline: {inferred.name}\n"
        f"description: \"\"   # what the model is for\n"
        f"data:\n"
        f"  source: {json.dumps(source)}   # relative to this file\n"
        + (f"  format: {inferred.data_format}\n" if inferred.data_format else "")
        + (f"  image: {{height: {inferred.image_shape[0]}, width: {inferred.image_shape[1]}, channels: "
           f"{inferred.image_shape[2]}}}   # every image is resized to this\n" if inferred.image_shape else "")
        + f"  label_column: {json.dumps(inferred.label)}\n"
        f"  schema_path: {json.dumps(inferred.schema_path.name)}   # curate it: types, domains, presence\n"
        f"  eval_percent: 20\n"
        f"task:\n{task}"
        f"train:\n"
        f"  model: {model}   # mlp, cnn, path/to/module.py:function or package.module:function\n"
        f"  hparams: {{}}\n"
        f"  epochs: 20\n"
        f"  batch_size: 64\n"
        f"  learning_rate: 0.002\n"
        f"evaluate:\n"
        f"  thresholds: {{{metric}: {value}}}   # {why}\n"
        f"  change_thresholds: {{{metric}: {change}}}   # against the champion: {change_why}\n"
    )


def write_files(inferred: Inferred, csv_path: Path, model: str, force: bool) -> None:
    """Both files or neither: each goes to a temp file first, then both are renamed into place."""
    for path in (inferred.yaml_path, inferred.schema_path):
        if path.exists() and not force:
            raise InitError(f"{path} exists; pass --force to overwrite it")
    schema = infer_schema(summaries(inferred.profile), inferred.label, with_domains=True)
    comment = (f"Schema inferred by `kiln init` from {csv_path.name} ({inferred.profile.rows} rows). Curate it:\n"
               f"string domains list every category seen (up to {MAX_DOMAIN_SIZE}); a value outside one is an\n"
               f"anomaly that stops the run. Mark integer codes categorical with int_domain {{ is_categorical: true }}.")
    contents = {inferred.schema_path: schema_text(schema, comment), inferred.yaml_path: yaml_text(inferred, csv_path, model)}
    inferred.yaml_path.parent.mkdir(parents=True, exist_ok=True)
    staged = []
    try:
        for path, text in contents.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            staged.append((tmp, path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def renamed_columns(profile: DataProfile, label: str) -> dict[str, str]:
    """Columns whose served feature name differs (TF signature keys allow letters, digits, _.-)."""
    return {c: served_name(c) for c in profile.header if c != label and served_name(c) != c}
