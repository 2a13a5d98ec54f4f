"""gRPC PredictionService and ModelService on the servicer classes of tensorflow-serving-api."""

from __future__ import annotations

import logging
import time
from concurrent import futures

import grpc
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.codec import ServingError
from serving.model_server import inference
from serving.model_server.core import ServingCore
from serving.model_server.servable import error_code_number
from serving.model_server.tensors import array_from_proto, proto_from_array

log = logging.getLogger("kiln.model_server")

MAX_MESSAGE_CHARS = 1024
INT32_MAX = 2**31 - 1


def _abort(context: grpc.ServicerContext, error: ServingError):
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "...TRUNCATED"
    context.abort(error.grpc_status, message)


def _dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore):
        self._core = core

    def _measured(self, api: str, model_name: str, context, handler):
        """Record request_count / request_latency as TF Serving's gRPC front end does."""
        started = time.perf_counter()
        try:
            response = handler()
        except ServingError as error:
            self._core.metrics.request_count.inc(model_name, error.code)
            _abort(context, error)
        self._core.metrics.request_count.inc(model_name, "OK")
        self._core.metrics.request_latency.observe(
            model_name, api, "GRPC", value=(time.perf_counter() - started) * 1e6
        )
        return response

    def Predict(self, request: predict_pb2.PredictRequest, context):  # noqa: N802 - gRPC method name
        def handle():
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
            run = self._core.runner_for(request.model_spec.name, "Predict")
            outputs = inference.select_outputs(
                signature, run(servable, signature.name, inputs), request.output_filter
            )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = version
            response.model_spec.signature_name = signature.name
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(proto_from_array(value, signature.output_dtypes[key]))
            return response

        return self._measured("Predict", request.model_spec.name, context, handle)

    def Classify(self, request: classification_pb2.ClassificationRequest, context):  # noqa: N802
        return self._example_method("Classify", request, context, classification_pb2.ClassificationResponse,
                                    inference.classify)

    def Regress(self, request: regression_pb2.RegressionRequest, context):  # noqa: N802
        return self._example_method("Regress", request, context, regression_pb2.RegressionResponse,
                                    inference.regress)

    def _example_method(self, api: str, request, context, response_type, infer):
        """Classify and Regress: run a tf.Example signature and echo the resolved model spec."""

        def handle():
            version, servable = self._core.resolve_spec(request.model_spec)
            run = self._core.runner_for(request.model_spec.name, api)
            response = response_type()
            response.result.CopyFrom(infer(servable, request.model_spec.signature_name, request.input, run))
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = version
            response.model_spec.signature_name = request.model_spec.signature_name or inference.DEFAULT_SIGNATURE
            return response

        return self._measured(api, request.model_spec.name, context, handle)

    def MultiInference(self, request, context):  # noqa: N802
        try:
            name = request.tasks[0].model_spec.name if request.tasks else ""
            return inference.multi_inference(
                request, self._core.resolve_spec, self._core.runner_for(name, "MultiInference")
            )
        except ServingError as error:
            _abort(context, error)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):  # noqa: N802
        try:
            return model_metadata(self._core, request)
        except ServingError as error:
            _abort(context, error)


def model_metadata(core: ServingCore, request: get_model_metadata_pb2.GetModelMetadataRequest):
    if not request.metadata_field:
        raise ServingError(
            "INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field"
        )
    for field in request.metadata_field:
        if field != "signature_def":
            raise ServingError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
    version, servable = core.resolve_spec(request.model_spec)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = request.model_spec.name
    response.model_spec.version.value = version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature_def)
    response.metadata["signature_def"].Pack(signature_map)
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self._core = core

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):  # noqa: N802
        try:
            if not request.HasField("model_spec"):
                raise ServingError("INVALID_ARGUMENT", "Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
            return self._core.manager.status(spec.name, version)
        except ServingError as error:
            _abort(context, error)

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):  # noqa: N802
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(
                    "INVALID_ARGUMENT",
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                    "currently supported",
                )
            self._core.manager.reload_config(request.config)
        except ServingError as error:
            log.error("ReloadConfig failed: %s", error.message)
            _abort(context, error)
        response.status.error_code = error_code_number("OK")
        return response


def build_grpc_server(
    core: ServingCore, max_threads: int, channel_arguments: list[tuple[str, object]]
) -> grpc.Server:
    options = [
        ("grpc.max_send_message_length", INT32_MAX),
        ("grpc.max_receive_message_length", INT32_MAX),
        ("grpc.so_reuseport", 0),
        *channel_arguments,
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grpc"), options=options
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    return server
