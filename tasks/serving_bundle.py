"""The folder TF Serving loads as one version, written once by optimize and shipped as is.

It holds the model that ships in the format it is served in: the selected variant's `model.tflite` (served
with --prefer_tflite_model) or a SavedModel (the trained one, or the fine-tuned one a variant was made from),
never both, so a server's format follows the folder. Beside it, warmup requests built from eval rows
(`assets.extra/tf_serving_warmup_requests`), so the server replays real traffic before it reports AVAILABLE: a
model that cannot answer them never gets a label. Evaluate scores this folder, register logs it to MLflow as the
version's `tf_serving/`, and the InfraValidator's sandbox, push and a serving sync all load these same bytes
(one digest, `common.digest`), so what was blessed and validated is what serves, whoever puts it there.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tasks.artifacts.optimized import TFLITE_FILE
from tasks.features import FeatureSpec
from tasks.models.export import SIGNATURE

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_RECORDS = 8


def write_version_folder(folder: Path, model_name: str, features: list[FeatureSpec], warmup_inputs: dict[str, Any],
                         tflite_model: bytes | None = None, saved_model: Path | None = None) -> Path:
    """Fill `folder` (new) with `tflite_model` or a copy of `saved_model`, and warmup requests; the same inputs
    give the same bytes (a retry publishes the same digest)."""
    if (tflite_model is None) == (saved_model is None):
        raise ValueError("a version folder holds a TFLite model or a SavedModel, exactly one")
    if saved_model is not None:
        shutil.copytree(saved_model, folder)
    else:
        folder.mkdir(parents=True)
        (folder / TFLITE_FILE).write_bytes(tflite_model)
    warmup = folder / WARMUP_FILE
    warmup.parent.mkdir(parents=True, exist_ok=True)
    write_warmup_requests(warmup, model_name, features, warmup_inputs)
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
