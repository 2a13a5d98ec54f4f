"""Warmup replay: `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog) runs before AVAILABLE."""

from __future__ import annotations

import logging
import os
import time

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.codec import ServingError
from serving.model_server import inference
from serving.model_server.metrics import ServerMetrics
from serving.model_server.servable import Servable
from serving.model_server.tensors import array_from_proto

log = logging.getLogger("kiln.model_server")

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000


def _read_records(path: str) -> list[bytes]:
    records = []
    try:
        for record in tf.compat.v1.io.tf_record_iterator(path):
            records.append(record)
            if len(records) > MAX_WARMUP_RECORDS:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}",
                )
    except tf.errors.OpError as exc:
        raise ServingError(
            "DATA_LOSS",
            f"Failed to read warmup record from {path}: {exc.message}. "
            "Please verify your warmup data is in TFRecord format.",
        ) from exc
    return records


def _replay(servable: Servable, entry: prediction_log_pb2.PredictionLog) -> None:
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request = entry.predict_log.request
        signature = inference.predict_signature(servable, request.model_spec.signature_name)
        inputs = {key: array_from_proto(proto) for key, proto in request.inputs.items()}
        inference.check_predict_inputs(signature, list(inputs))
        outputs = servable.run(signature.name, inputs)
        inference.select_outputs(signature, outputs, list(request.output_filter))
    elif kind == "classify_log":
        request = entry.classify_log.request
        inference.classify(servable, request.model_spec.signature_name, request.input)
    elif kind == "regress_log":
        request = entry.regress_log.request
        inference.regress(servable, request.model_spec.signature_name, request.input)
    elif kind == "multi_inference_log":
        inference.multi_inference(entry.multi_inference_log.request, lambda _spec: (0, servable))
    else:
        raise ServingError("UNIMPLEMENTED", f"Unsupported log_type for warmup: {kind}")


def run_warmup(version_dir: str, servable: Servable, metrics: ServerMetrics, iterations: int = 1) -> None:
    """Replay the version's warmup records; any failure fails the load."""
    path = os.path.join(version_dir, WARMUP_FILE)
    if not os.path.exists(path):
        log.info("No warmup data file found at %s", path)
        return
    started = time.perf_counter()
    status = "OK"
    try:
        records = _read_records(path)
        for record in records:
            entry = prediction_log_pb2.PredictionLog()
            try:
                entry.ParseFromString(record)
            except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
                raise ServingError(
                    "INVALID_ARGUMENT", f"Failed to parse warmup record from model path: {version_dir}"
                ) from exc
            for _ in range(max(iterations, 1)):
                _replay(servable, entry)
        metrics.model_warmup_records_read.inc(version_dir, status, amount=len(records))
        log.info(
            "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
            path,
            len(records),
        )
    except ServingError as exc:
        status = exc.code
        raise
    finally:
        metrics.model_warmup_latency.observe(version_dir, status, value=(time.perf_counter() - started) * 1e6)
