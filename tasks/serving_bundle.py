"""The folder TF Serving loads as one version, written once by register and shipped as is.

It holds the SavedModel optimize chose to serve (the trained one, or the fine-tuned one its TFLite file
came from), the selected variant's `model.tflite` (for `--prefer_tflite_model` and edge use) and warmup
requests built from eval rows (`assets.extra/tf_serving_warmup_requests`), so the server replays real
traffic before it reports AVAILABLE: a model that cannot answer them never gets a label. Register logs
it to MLflow as the version's `tf_serving/`; the InfraValidator's sandbox, push and a serving sync all
load these same bytes, so what was validated is what serves, whoever puts it there.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tasks.artifacts.examples import Examples
from tasks.artifacts.model import SAVED_MODEL_DIR, Model
from tasks.artifacts.optimized import SERVED_SAVED_MODEL, TFLITE_FILE, OptimizedModel
from tasks.features import FeatureSpec, load_arrays
from tasks.models.export import SIGNATURE

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_RECORDS = 8


def write_version_folder(folder: Path, trained: Model, optimized: OptimizedModel, examples: Examples,
                         served_model_name: str) -> Path:
    """Fill `folder` (new) with the version's files; the same inputs give the same bytes (a retry is a no-op)."""
    # Local copies (the artifacts may be on object storage): the folder is written locally, then published.
    source = optimized.local(SERVED_SAVED_MODEL) if optimized.fine_tuned_saved_model else trained.local(SAVED_MODEL_DIR)
    shutil.copytree(source, folder)
    features = trained.preprocessing.features
    inputs, _ = load_arrays(examples.split_files("eval"), features, trained.preprocessing.label,
                            limit=WARMUP_RECORDS)
    warmup = folder / WARMUP_FILE
    warmup.parent.mkdir(parents=True, exist_ok=True)
    write_warmup_requests(warmup, served_model_name, features, inputs)
    if optimized.tflite_path:
        shutil.copy2(optimized.local(TFLITE_FILE), folder / TFLITE_FILE)
    return folder


def write_warmup_requests(path: Path, model_name: str, features: list[FeatureSpec], inputs: dict[str, Any]) -> None:
    """One PredictLog per example, in TF Serving's warmup format (a TFRecord of PredictionLog)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    count = len(next(iter(inputs.values())))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in range(count):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = SIGNATURE
            for feature in features:
                values = inputs[feature.name][row:row + 1]
                request.inputs[feature.name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.as_dtype(feature.dtype)))
            log_record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log_record.SerializeToString(deterministic=True))  # map order fixed: same bytes on retry
