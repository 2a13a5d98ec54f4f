"""What each gRPC method does, request in, response out, raising ServingError; `grpc_service` adapts these to
the sync and the asyncio servers. Predict, Classify and Regress record request_count / request_latency as TF
Serving's gRPC front end does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent import futures

from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from serving.codec import ServingError
from serving.model_server import inference
from serving.model_server.core import ServingCore
from serving.model_server.servable import Servable, Signature, error_code_number
from serving.model_server.tensors import array_from_proto, proto_from_array

log = logging.getLogger("kiln.model_server")


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def _await_batch(future: futures.Future) -> asyncio.Future:
    """`asyncio.wrap_future` minus its cancellation link: when a client cancels (or its deadline passes),
    the task's Future must stay pending, or the batch thread's `set_result` on it would raise and fail every
    other request of the batch."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def settle(done: futures.Future) -> None:
        if waiter.cancelled():
            return
        error = done.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    future.add_done_callback(lambda done: loop.call_soon_threadsafe(settle, done))
    return waiter


class GrpcCalls:
    def __init__(self, core: ServingCore):
        self._core = core

    def _count(
        self, model_name: str, error: ServingError | None, api: str = "", started: float = 0.0
    ) -> None:
        metrics = self._core.metrics
        metrics.request_count.inc(model_name, error.code if error is not None else "OK")
        if error is None:
            metrics.request_latency.observe(
                model_name, api, "GRPC", value=(time.perf_counter() - started) * 1e6
            )

    def _measured(self, api: str, model_name: str, handle):
        started = time.perf_counter()
        try:
            response = handle()
        except ServingError as error:
            self._count(model_name, error)
            raise
        self._count(model_name, None, api, started)
        return response

    # ----- Predict ------------------------------------------------------------------------------------------
    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        def handle():
            version, servable, signature, inputs = self._predict_inputs(request)
            run = self._core.runner_for(request.model_spec.name, "Predict")
            response = self._predict_response(request, version, signature, run(servable, signature.name, inputs))
            self._core.request_log.predict(request, response)
            return response

        return self._measured("Predict", request.model_spec.name, handle)

    async def predict_batched(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        """Predict with --enable_batching, on the event loop: it awaits its batch instead of holding a thread,
        so a batch can take every request in flight; decoding and encoding are cheap next to a thread hop."""
        started = time.perf_counter()
        name = request.model_spec.name
        try:
            version, servable, signature, inputs = self._predict_inputs(request)
            submitted = time.perf_counter()
            outputs = await _await_batch(self._core.batcher.submit(servable, signature.name, inputs))
            self._core.record_runtime(name, "Predict", servable, submitted)
            response = self._predict_response(request, version, signature, outputs)
            self._core.request_log.predict(request, response)
        except ServingError as error:
            self._count(name, error)
            raise
        self._count(name, None, "Predict", started)
        return response

    def _predict_inputs(self, request: predict_pb2.PredictRequest) -> tuple[int, Servable, Signature, dict]:
        version, servable = self._core.resolve_spec(request.model_spec)
        signature = inference.predict_signature(servable, request.model_spec.signature_name)
        inference.check_predict_inputs(signature, list(request.inputs))
        inputs = {}
        for index, key in enumerate(sorted(request.inputs)):
            proto = request.inputs[key]
            expected = signature.input_dtypes.get(key)
            if expected is not None and proto.dtype != expected:
                raise ServingError(
                    "INVALID_ARGUMENT",
                    f"Expects arg[{index}] to be {_dtype_name(expected)} but {_dtype_name(proto.dtype)} is provided",
                )
            inputs[key] = array_from_proto(proto)
        return version, servable, signature, inputs

    @staticmethod
    def _predict_response(
        request: predict_pb2.PredictRequest, version: int, signature: Signature, outputs: dict
    ) -> predict_pb2.PredictResponse:
        outputs = inference.select_outputs(signature, outputs, request.output_filter)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature.name
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(proto_from_array(value, signature.output_dtypes[key]))
        return response

    # ----- tf.Example methods -------------------------------------------------------------------------------
    def classify(self, request: classification_pb2.ClassificationRequest):
        return self._example_method(
            "Classify", request, classification_pb2.ClassificationResponse, inference.classify,
            self._core.request_log.classify,
        )  # fmt: skip

    def regress(self, request: regression_pb2.RegressionRequest):
        return self._example_method(
            "Regress", request, regression_pb2.RegressionResponse, inference.regress, self._core.request_log.regress
        )

    def _example_method(self, api: str, request, response_type, infer, log_request):
        """Classify and Regress: run a tf.Example signature and echo the resolved model spec."""

        def handle():
            version, servable = self._core.resolve_spec(request.model_spec)
            run = self._core.runner_for(request.model_spec.name, api)
            response = response_type()
            response.result.CopyFrom(infer(servable, request.model_spec.signature_name, request.input, run))
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = version
            response.model_spec.signature_name = (
                request.model_spec.signature_name or inference.DEFAULT_SIGNATURE
            )
            log_request(request, response)
            return response

        return self._measured(api, request.model_spec.name, handle)

    def multi_inference(self, request):
        name = request.tasks[0].model_spec.name if request.tasks else ""
        response = inference.multi_inference(
            request, self._core.resolve_spec, self._core.runner_for(name, "MultiInference")
        )
        self._core.request_log.multi_inference(request, response)
        return response

    # ----- metadata and ModelService ------------------------------------------------------------------------
    def model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest):
        if not request.metadata_field:
            raise ServingError(
                "INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != "signature_def":
                raise ServingError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
        version, servable = self._core.resolve_spec(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def model_status(self, request: get_model_status_pb2.GetModelStatusRequest):
        if not request.HasField("model_spec"):
            raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
        spec = request.model_spec
        version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
        return self._core.manager.status(spec.name, version)

    def reload_config(self, request: model_management_pb2.ReloadConfigRequest, fan_out: bool = True):
        """Blocks until the new models are AVAILABLE, so the asyncio server runs it on its executor.

        With --kiln_server_processes the other processes get the same request (unless this one was itself
        forwarded), even when it fails here, so that every process holds the config that was asked for."""
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                    "currently supported",
                )
            local_error = None
            try:
                self._core.manager.reload_config(request.config)
            except ServingError as error:
                local_error = error
            if fan_out and self._core.siblings is not None:
                try:
                    self._core.siblings.forward_reload(request)
                except ServingError as error:
                    local_error = local_error or error
            if local_error is not None:
                raise local_error
        except ServingError as error:
            log.error("ReloadConfig failed: %s", error.message)
            raise
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = error_code_number("OK")
        return response
