"""Push: ship the registered model to TF Serving as version N (= MLflow version N), labelled canary.

Gated on the blessing (the step runner skips it for an unblessed model, unless the run was triggered
with `force_push_reason`, which is then recorded on the MLflow version and in the alias history).

The version folder holds the SavedModel optimize chose to serve (the stripped pruned one when a pruned
variant was selected) and `model.tflite`, the selected variant's file (for `--prefer_tflite_model`),
and warmup requests built from eval rows (`assets.extra/tf_serving_warmup_requests`), so the server
replays real traffic before it reports AVAILABLE — a model that cannot answer them never gets a label.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from tasks import tracking
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import TFLITE_FILE, OptimizedModel
from tasks.artifacts.pushed import PushedModel, PushedProperties
from tasks.artifacts.registered import RegisteredModel
from tasks.config import PipelineConfig
from tasks.context import StepContext
from tasks.features import FeatureSpec, load_arrays
from tasks.models.export import SIGNATURE

log = logging.getLogger(__name__)

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
WARMUP_RECORDS = 8


def run(config: PipelineConfig, ctx: StepContext, evaluation: str, registered: str, model: str, optimized: str,
        examples: str) -> dict[str, str]:
    from serving.deployer import ServingDeployer

    registration = RegisteredModel.read(registered).properties
    version = registration.version
    # The step runner's gate let an unblessed model through only with a reason: record it with the version.
    forced = None if ModelEvaluation.read(evaluation).properties.blessed else config.serving.force_push_reason
    if forced:
        tracking.client(ctx).set_model_version_tag(registration.model_name, str(version), "kiln.forced_push_reason",
                                                   forced)
    trained = Model.read(model)
    compressed = OptimizedModel.read(optimized)
    tflite = compressed.tflite_path
    # A fine-tuned selection (pruned, QAT) ships the SavedModel its TFLite file came from; else the trained one.
    saved_model = Path(compressed.fine_tuned_saved_model or trained.saved_model)
    name = config.served_model_name
    target = ctx.require_serving()
    deployer = ServingDeployer(target)
    features = trained.preprocessing.features
    with tempfile.TemporaryDirectory() as scratch:
        warmup = Path(scratch) / "warmup"
        inputs, _ = load_arrays(Examples.read(examples).split_files("eval"), features, trained.preprocessing.label,
                                limit=WARMUP_RECORDS)
        write_warmup_requests(warmup, name, features, inputs)
        extras = {WARMUP_FILE: warmup}
        if tflite:
            extras[TFLITE_FILE] = Path(tflite)
        version_dir = deployer.stage_version(name, version, saved_model, extras)
    served = deployer.push_version(name, version)
    out_uri = ctx.output_uri("push", "pushed")
    with PushedModel.publish(out_uri) as out:
        out.properties = PushedProperties(serving_model_name=name, version=version, version_dir=str(version_dir),
                                          versions=list(served.versions), labels=served.labels,
                                          rest_url=target.rest_url, grpc_address=target.grpc_address,
                                          forced_reason=forced, saved_model=str(saved_model),
                                          variant=compressed.properties.selected)
    log.info("push: %s version %s loaded from %s, labels %s", name, version, version_dir, served.labels)
    return {"pushed": out_uri}


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
