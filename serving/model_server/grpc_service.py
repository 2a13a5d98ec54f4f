"""gRPC PredictionService and ModelService on the servicer classes of tensorflow-serving-api.

Two servers, chosen by --enable_batching, both answering through `GrpcCalls` (same statuses and messages):

* without batching, grpcio's sync server: each call needs a thread for the model run anyway, and measured per
  call it costs less than grpc.aio, whose C core runs its socket work while holding the GIL;
* with batching, a grpc.aio server: Predict awaits its batch on the event loop instead of parking one of the
  --grpc_max_threads threads on it, so batches are not capped by the thread count and there is no thread
  hand-off per request. Every other method (it may run a model or block) goes to an executor of
  --grpc_max_threads threads, where the sync server would have run it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent import futures

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.codec import ServingError
from serving.model_server.core import ServingCore
from serving.model_server.grpc_calls import GrpcCalls
from serving.model_server.process_group import is_forwarded

log = logging.getLogger("kiln.model_server")

MAX_MESSAGE_CHARS = 1024
INT32_MAX = 2**31 - 1


def _details(error: ServingError) -> str:
    message = error.message
    return message[:MAX_MESSAGE_CHARS] + "...TRUNCATED" if len(message) > MAX_MESSAGE_CHARS else message


def _answer(context: grpc.ServicerContext, call, request):
    try:
        return call(request)
    except ServingError as error:
        context.abort(error.grpc_status, _details(error))


async def _answer_async(context: grpc.aio.ServicerContext, pending):
    """A ServingError becomes its status; any other error the status grpcio's sync server gives it (UNKNOWN,
    "Exception calling application: ..."), not grpc.aio's own wording, so both servers answer alike."""
    try:
        return await pending
    except ServingError as error:
        await context.abort(error.grpc_status, _details(error))
    except Exception as exc:  # noqa: BLE001 - a bug still answers a status, logged as grpcio logs it
        log.exception("Exception calling application: %s", exc)
        await context.abort(grpc.StatusCode.UNKNOWN, f"Exception calling application: {exc}")


# noqa: N802 below: the method names are the gRPC ones.
class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, calls: GrpcCalls):
        self._calls = calls

    def Predict(self, request, context):  # noqa: N802
        return _answer(context, self._calls.predict, request)

    def Classify(self, request, context):  # noqa: N802
        return _answer(context, self._calls.classify, request)

    def Regress(self, request, context):  # noqa: N802
        return _answer(context, self._calls.regress, request)

    def MultiInference(self, request, context):  # noqa: N802
        return _answer(context, self._calls.multi_inference, request)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(context, self._calls.model_metadata, request)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, calls: GrpcCalls):
        self._calls = calls

    def GetModelStatus(self, request, context):  # noqa: N802
        return _answer(context, self._calls.model_status, request)

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        forwarded = is_forwarded(context.invocation_metadata())
        return _answer(context, lambda r: self._calls.reload_config(r, fan_out=not forwarded), request)


class _Offload:
    def __init__(self, calls: GrpcCalls, executor: futures.Executor):
        self._calls, self._executor = calls, executor

    def _offload(self, call, request) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._executor, call, request)


class BatchingPredictionServicer(_Offload, prediction_service_pb2_grpc.PredictionServiceServicer):
    async def Predict(self, request, context):  # noqa: N802
        return await _answer_async(context, self._calls.predict_batched(request))

    async def Classify(self, request, context):  # noqa: N802
        return await _answer_async(context, self._offload(self._calls.classify, request))

    async def Regress(self, request, context):  # noqa: N802
        return await _answer_async(context, self._offload(self._calls.regress, request))

    async def MultiInference(self, request, context):  # noqa: N802
        return await _answer_async(context, self._offload(self._calls.multi_inference, request))

    async def GetModelMetadata(self, request, context):  # noqa: N802
        return await _answer_async(context, self._offload(self._calls.model_metadata, request))


class AsyncModelServicer(_Offload, model_service_pb2_grpc.ModelServiceServicer):
    async def GetModelStatus(self, request, context):  # noqa: N802
        return await _answer_async(context, self._offload(self._calls.model_status, request))

    async def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        # Blocks until the models are AVAILABLE: on the executor, never on the loop.
        forwarded = is_forwarded(context.invocation_metadata())
        reload = functools.partial(self._calls.reload_config, fan_out=not forwarded)
        return await _answer_async(context, self._offload(reload, request))


def _options(channel_arguments: list[tuple[str, object]], reuse_port: bool) -> list[tuple[str, object]]:
    return [
        ("grpc.max_send_message_length", INT32_MAX),
        ("grpc.max_receive_message_length", INT32_MAX),
        # Off, as in TF Serving (a second server on the port must fail), except between the processes of
        # --kiln_server_processes, which share it on purpose.
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        *channel_arguments,
    ]


def build_sync_server(
    core: ServingCore,
    executor: futures.ThreadPoolExecutor,
    channel_arguments: list[tuple[str, object]],
    reuse_port: bool = False,
) -> grpc.Server:
    server = grpc.server(executor, options=_options(channel_arguments, reuse_port))
    calls = GrpcCalls(core)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(calls), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(calls), server)
    return server


def build_aio_server(
    core: ServingCore,
    executor: futures.Executor,
    channel_arguments: list[tuple[str, object]],
    reuse_port: bool = False,
) -> grpc.aio.Server:
    """Call on the event loop that will serve it."""
    server = grpc.aio.server(options=_options(channel_arguments, reuse_port))
    calls = GrpcCalls(core)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        BatchingPredictionServicer(calls, executor), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(AsyncModelServicer(calls, executor), server)
    return server
