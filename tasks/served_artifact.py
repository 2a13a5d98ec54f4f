"""A model version folder run in-process exactly as the server runs it: `model.tflite` in LiteRT when the folder
has one (TF Serving with --prefer_tflite_model, which every server kiln starts or ships runs with), else the
SavedModel's `serving_default`. Evaluate (the candidate and the champion), verify and the optimize report score
versions through here, so their numbers are those of the served bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.artifacts.optimized import TFLITE_FILE, ServedFormat

SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def served_format(folder: Path) -> ServedFormat:
    """What a server with --prefer_tflite_model loads from the folder."""
    if (folder / TFLITE_FILE).is_file():
        return "tflite"
    if any((folder / name).is_file() for name in SAVED_MODEL_FILES):
        return "saved_model"
    raise FileNotFoundError(f"{folder}: neither {TFLITE_FILE} nor a SavedModel")


class ServedModel:
    """A version folder loaded once, then called on batch after batch (batch inference)."""

    def __init__(self, folder: Path):
        self.format = served_format(folder)
        if self.format == "saved_model":
            from tasks.models.export import load_serving_function

            self._function = load_serving_function(folder)
            self._specs = self._function.structured_input_signature[1]
        else:
            from tasks.compression.tflite import Runner

            self._runner = Runner((folder / TFLITE_FILE).read_bytes())

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Every output of the serving signature for one batch of numpy inputs."""
        import numpy as np

        if self.format == "tflite":
            return {name: np.asarray(values) for name, values in self._runner(inputs).items()}
        import tensorflow as tf

        batch = {name: tf.constant(values, self._specs[name].dtype) for name, values in inputs.items()}
        return {name: value.numpy() for name, value in self._function(**batch).items()}


def predict_served(folder: Path, inputs: dict[str, Any], batch_size: int = 1024) -> dict[str, Any]:
    """Every output of the version's serving signature over numpy inputs, in the format the server runs."""
    import numpy as np

    model = ServedModel(folder)
    size = len(next(iter(inputs.values())))
    chunks: dict[str, list[Any]] = {}
    for start in range(0, size, batch_size):
        for name, values in model({k: v[start:start + batch_size] for k, v in inputs.items()}).items():
            chunks.setdefault(name, []).append(values)
    return {name: np.concatenate(parts) for name, parts in chunks.items()}
