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


def predict_served(folder: Path, inputs: dict[str, Any], batch_size: int = 1024) -> dict[str, Any]:
    """Every output of the version's serving signature over numpy inputs, in the format the server runs."""
    import numpy as np

    if served_format(folder) == "saved_model":
        from tasks.models.export import predict

        return predict(folder, inputs, batch_size)
    from tasks.compression.tflite import Runner

    runner = Runner((folder / TFLITE_FILE).read_bytes())
    size = len(next(iter(inputs.values())))
    chunks: dict[str, list[Any]] = {}
    for start in range(0, size, batch_size):
        for name, values in runner({k: v[start:start + batch_size] for k, v in inputs.items()}).items():
            chunks.setdefault(name, []).append(np.asarray(values))
    return {name: np.concatenate(parts) for name, parts in chunks.items()}
