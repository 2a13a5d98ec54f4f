"""The benchmark's models: the demo's digits CNN, built by the real pipeline steps called as plain functions,
and a CNN whose input is a nested array (8x8x1 images), as image models take it.

`build_saved_model` runs ingest -> validate -> transform -> train in a temp KILN_HOME (MLflow tracking in a
sqlite file there) and returns the Model artifact's SavedModel; `write_mlflow_model` saves the same weights
as an MLflow tf_keras model for `mlflow models serve`; `sample_pixels` is one real digit row to send;
`build_nested_saved_model` trains the image CNN briefly on the same digits; `write_tflite` puts a TFLite
conversion beside a version's SavedModel, for --prefer_tflite_model.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import common  # noqa: F401 - sets TF_USE_LEGACY_KERAS before anything imports TensorFlow

REPO = Path(__file__).resolve().parent.parent
PIPELINE_CONFIG = REPO / "pipelines" / "digits.yaml"
DATA_FILE = Path("data") / "digits.csv"
INPUT = "pixels"  # the digits pipeline serves its 64 pixel columns as one input (transform.feature_groups)
NESTED_INPUT = "images"  # the nested-input CNN takes [batch, 8, 8, 1]


def build_saved_model(home: Path, epochs: int | None = None) -> Path:
    """Train the demo model under `home` (used as KILN_HOME); return its SavedModel folder."""
    from infra.cli.demo_data import write_digits_csv
    from tasks.artifacts.model import Model
    from tasks.snapshot import Deployment, resolve_run
    from tasks.step_runner import run_steps

    write_digits_csv(home / DATA_FILE)
    os.environ["KILN_HOME"] = str(home)
    deployment = Deployment(artifact_root=str(home / "artifacts"), tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = resolve_run(str(PIPELINE_CONFIG), {"epochs": epochs}, deployment, "serving-bench")
    outputs = run_steps(run, ["ingest", "validate", "transform", "train"])
    return Path(Model.read(outputs["model"]).saved_model)


def install_version(saved_model: Path, model_base_path: Path, version: int = 1) -> Path:
    """Copy the SavedModel to `<model_base_path>/<version>/`, the layout TF Serving polls."""
    target = model_base_path / str(version)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(saved_model, target)
    return target


def write_mlflow_model(saved_model: Path, target: Path) -> Path:
    """The same model as an MLflow `tensorflow` flavor model (tf_keras), loadable by `mlflow models serve`."""
    import mlflow.tensorflow
    import numpy as np
    import tf_keras as keras
    from mlflow.models import infer_signature

    from tasks.models.assemble import PROBABILITIES
    from tasks.models.export import load_serving_function

    keras_model = keras.models.load_model(str(saved_model))
    sample = {INPUT: np.zeros((1, keras_model.input_shape[INPUT][-1]), dtype=np.float32)}
    probabilities = load_serving_function(saved_model)(**sample)[PROBABILITIES].numpy()
    if target.exists():
        shutil.rmtree(target)
    mlflow.tensorflow.save_model(keras_model, str(target), signature=infer_signature(sample, probabilities))
    return target


def sample_pixels(home: Path | None = None) -> list[float]:
    """One real digit (64 pixel values) from the demo CSV, or from scikit-learn when no CSV was written."""
    csv_path = home / DATA_FILE if home is not None else None
    if csv_path is not None and csv_path.exists():
        with csv_path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            row = next(reader)
        return [float(v) for name, v in zip(header, row, strict=True) if name != "label"]
    from sklearn.datasets import load_digits

    return [float(v) for v in load_digits().data[0]]


def build_nested_saved_model(target: Path, pixels_csv: Path | None, epochs: int = 2) -> Path:
    """A CNN over [batch, 8, 8, 1] images (conv32 -> conv64 -> dense128, as the demo's), trained for a few
    epochs on the digits, saved as a SavedModel with outputs `probabilities` and `class_id`."""
    import tensorflow as tf
    import tf_keras as keras

    images, labels = _digits(pixels_csv)
    inputs = keras.Input((8, 8, 1), name=NESTED_INPUT)
    hidden = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    hidden = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(hidden)
    hidden = keras.layers.Dense(128, activation="relu")(keras.layers.Flatten()(hidden))
    probabilities = keras.layers.Dense(10, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, probabilities)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images / 16.0, labels, epochs=epochs, batch_size=64, verbose=0)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name=NESTED_INPUT)])
    def serve(images):
        scores = model(images / 16.0)
        return {"probabilities": scores, "class_id": tf.argmax(scores, axis=-1)}

    model.save(str(target), signatures={"serving_default": serve})
    return target


def _digits(pixels_csv: Path | None):
    import numpy as np

    if pixels_csv is not None and pixels_csv.exists():
        rows = np.loadtxt(pixels_csv, delimiter=",", skiprows=1, dtype=np.float32)
        with pixels_csv.open() as fh:
            header = fh.readline().strip().split(",")
        label = header.index("label")
        pixels = np.delete(rows, label, axis=1)
        return pixels.reshape(-1, 8, 8, 1), rows[:, label].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.float32).reshape(-1, 8, 8, 1), digits.target


def as_image(pixels: list[float]) -> list[list[list[float]]]:
    """One digit row as the nested [8][8][1] instance the image CNN takes."""
    return [[[pixels[row * 8 + column]] for column in range(8)] for row in range(8)]


def write_tflite(saved_model: Path, version_dir: Path, conversion: str) -> Path:
    """`model.tflite` beside the version's SavedModel (`conversion` as in tasks.compression.tflite)."""
    from tasks.compression import tflite

    target = version_dir / "model.tflite"
    target.write_bytes(tflite.convert(saved_model, conversion))
    return target
