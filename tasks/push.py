"""Push: ship the registered model to TF Serving as version N (= MLflow version N), labelled canary.

The version folder carries `model.tflite` (for `--prefer_tflite_model`) and warmup requests built
from eval rows (`assets.extra/tf_serving_warmup_requests`), so the server replays real traffic
before it reports AVAILABLE — a model that cannot answer them never gets a label.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from tasks.artifacts import StepContext, publish_artifact, read_artifact
from tasks.config import PipelineConfig
from tasks.ingest import load_split
from tasks.model import INPUT_KEY, SIGNATURE
from tasks.optimize import TFLITE_FILE
from tasks.train import SAVED_MODEL_DIR

log = logging.getLogger(__name__)

KIND = "PushedModel"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_RECORDS = 8


def run(config: PipelineConfig, ctx: StepContext, registered: str, model: str, optimized: str,
        examples: str) -> dict[str, str]:
    from serving.deployer import ServingDeployer, ServingTarget

    version = int(read_artifact(registered, "RegisteredModel").properties["version"])
    saved_model = Path(read_artifact(model, "Model").path(SAVED_MODEL_DIR))
    tflite = Path(read_artifact(optimized, "OptimizedModel").path(TFLITE_FILE))
    name = config.serving.model_name
    target = ServingTarget.from_env()
    deployer = ServingDeployer(target)
    with tempfile.TemporaryDirectory() as scratch:
        warmup = Path(scratch) / "warmup"
        pixels, _ = load_split(examples, "eval")
        write_warmup_requests(warmup, name, pixels[:WARMUP_RECORDS])
        extras = {WARMUP_FILE: warmup}
        if tflite.exists():
            extras[TFLITE_FILE] = tflite
        version_dir = deployer.stage_version(name, version, saved_model, extras)
    served = deployer.push_version(name, version)
    out_uri = ctx.output_uri("push", "pushed")
    properties = {
        "serving_model_name": name,
        "version": version,
        "version_dir": str(version_dir),
        "versions": list(served.versions),
        "labels": served.labels,
        "rest_url": target.rest_url,
        "grpc_address": target.grpc_address,
    }
    with publish_artifact(out_uri, KIND, properties):
        pass
    log.info("push: %s version %s loaded from %s, labels %s", name, version, version_dir, served.labels)
    return {"pushed": out_uri}


def write_warmup_requests(path: Path, model_name: str, pixels) -> None:
    """One PredictLog per row, in TF Serving's warmup format (a TFRecord of PredictionLog)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in pixels:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = SIGNATURE
            request.inputs[INPUT_KEY].CopyFrom(tf.make_tensor_proto(row[None, :], dtype=tf.float32))
            log_record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log_record.SerializeToString())
