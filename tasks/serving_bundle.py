"""What a served version folder holds, built the same way for the InfraValidator's sandbox and for push.

The SavedModel optimize chose to serve (the trained one, or the fine-tuned one its TFLite file came
from), the selected variant's `model.tflite` (for `--prefer_tflite_model` and edge use) and warmup
requests built from eval rows (`assets.extra/tf_serving_warmup_requests`), so the server replays real
traffic before it reports AVAILABLE — a model that cannot answer them never gets a label.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.artifacts.examples import Examples
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import TFLITE_FILE, OptimizedModel
from tasks.features import FeatureSpec, load_arrays
from tasks.models.export import SIGNATURE

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_RECORDS = 8


@contextmanager
def version_bundle(trained: Model, optimized: OptimizedModel, examples: Examples,
                   model_name: str) -> Iterator[tuple[Path, dict[str, Path]]]:
    """(the SavedModel to serve, extra files by their path in the version folder), valid inside the block."""
    saved_model = Path(optimized.fine_tuned_saved_model or trained.saved_model)
    features = trained.preprocessing.features
    with tempfile.TemporaryDirectory(prefix="kiln-bundle-") as scratch:
        warmup = Path(scratch) / "warmup"
        inputs, _ = load_arrays(examples.split_files("eval"), features, trained.preprocessing.label,
                                limit=WARMUP_RECORDS)
        write_warmup_requests(warmup, model_name, features, inputs)
        extras = {WARMUP_FILE: warmup}
        if optimized.tflite_path:
            extras[TFLITE_FILE] = Path(optimized.tflite_path)
        yield saved_model, extras


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
            writer.write(log_record.SerializeToString())
