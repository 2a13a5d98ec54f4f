"""Request logging as TF Serving's ModelConfig.logging_config describes it, which the open-source
tensorflow_model_server accepts but cannot act on ("No request-logger-creator provided").

A model whose config entry has `logging_config { log_collector_config { type: "file" filename_prefix: "..." }
sampling_config { sampling_rate: r } }` gets a sample (rate r, each request drawn independently, as TF Serving's
RequestLogger draws) of its successful Predict, Classify and Regress requests, gRPC and REST, written as
`PredictionLog` records (`request_log_files` has the file layout). REST requests are logged as the gRPC protos they
are equivalent to.

Never in the way of a request: the request thread only draws the sample and puts the request's objects on a
bounded queue; protos are built, serialized and written by one writer thread. A full queue drops the record. Every
record ends counted in `:tensorflow:serving:request_log_count{model_name, status}` as `logged`, `dropped` or
`failed` (a folder that cannot be written is reported once in the server log; the server keeps serving).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tensorflow_serving.apis import (
    classification_pb2,
    logging_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)
from tensorflow_serving.config import logging_config_pb2, model_server_config_pb2

from serving.model_server.metrics import ServerMetrics
from serving.model_server.request_log_files import FileLimits, LogFile, VersionLogFolder
from serving.model_server.tensors import proto_from_array

log = logging.getLogger("kiln.model_server")

LOGGED, DROPPED, FAILED = "logged", "dropped", "failed"
DEFAULT_QUEUE_SIZE = 4096
IDLE_CHECK_SECONDS = 0.5  # how often an idle writer looks for files due for rotation


def _never_raises(method):
    """A request-side entry point: whatever goes wrong in it is a failed record, never a failed request."""

    @functools.wraps(method)
    def guarded(self, request_or_model_name, *args):
        try:
            method(self, request_or_model_name, *args)
        except Exception:  # noqa: BLE001
            log.exception("Request log: a record could not be queued")
            self._metrics.request_log_count.inc(_model_name_of(request_or_model_name, args), FAILED)

    return guarded


def _model_name_of(first, rest) -> str:
    if isinstance(first, str):  # a REST entry point: its model name comes first
        return first
    for candidate in (first, *rest):
        tasks = getattr(candidate, "tasks", None)  # a MultiInferenceRequest: one model for all its tasks
        spec = tasks[0].model_spec if tasks else getattr(candidate, "model_spec", candidate)
        if isinstance(spec, model_pb2.ModelSpec):
            return spec.name
    return ""


@dataclass(frozen=True)
class _ModelLogging:
    prefix: str
    sampling: logging_config_pb2.SamplingConfig

    @property
    def rate(self) -> float:
        return self.sampling.sampling_rate


@dataclass(frozen=True)
class _Pending:
    model_name: str
    version: int
    prefix: str
    build: Callable[[], prediction_log_pb2.PredictionLog]  # runs on the writer thread


class RequestLogger:
    def __init__(self, metrics: ServerMetrics, limits: FileLimits | None = None,
                 queue_size: int = DEFAULT_QUEUE_SIZE, sample: Callable[[], float] = random.random,
                 saved_model_tags: Sequence[str] = ("serve",)):  # fmt: skip
        self._metrics = metrics
        self._tags = list(saved_model_tags)  # the meta graph's tags every version is loaded with, as TF Serving logs
        self._limits = limits or FileLimits()
        self._sample = sample
        self._models: dict[str, _ModelLogging] = {}
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max(queue_size, 1))
        self._reported: set[str] = set()  # folders whose failure has been logged once
        self._thread: threading.Thread | None = None
        self._sequence = 0  # files opened by this process (the `n` of the file names)
        self._lock = threading.Lock()

    # ----- configuration (config load, reload, poll) --------------------------------------------------------
    def configure(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        models = {}
        for model in config.model_config_list.config:
            if model.HasField("logging_config"):
                collector = model.logging_config.log_collector_config
                models[model.name] = _ModelLogging(collector.filename_prefix, model.logging_config.sampling_config)
        self._models = models  # swapped whole: request threads read it without a lock
        if models:
            self._start()
        for name, settings in models.items():
            log.info("Request logging for model %s: sampling rate %g, to %s", name, settings.rate, settings.prefix)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_loop, name="request-log-writer", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        """Write what is queued and publish every open file."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        with contextlib.suppress(queue.Full):  # a writer that cannot keep up is left behind (a daemon thread)
            self._queue.put(None, timeout=timeout)
        thread.join(timeout)

    # ----- request side: sample, queue, never raise ---------------------------------------------------------
    @_never_raises
    def predict(self, request: predict_pb2.PredictRequest, response: predict_pb2.PredictResponse) -> None:
        self._offer_grpc("predict_log", prediction_log_pb2.PredictLog, request, response)

    @_never_raises
    def classify(self, request, response) -> None:
        self._offer_grpc("classify_log", prediction_log_pb2.ClassifyLog, request, response)

    @_never_raises
    def regress(self, request, response) -> None:
        self._offer_grpc("regress_log", prediction_log_pb2.RegressLog, request, response)

    @_never_raises
    def multi_inference(self, request, response) -> None:
        """Every task names the same model (the request is refused otherwise); the first result's spec carries the
        version that answered."""
        def build():
            log = prediction_log_pb2.MultiInferenceLog(request=request, response=response)
            return prediction_log_pb2.PredictionLog(multi_inference_log=log)

        self._offer(request.tasks[0].model_spec.name, response.results[0].model_spec, build)

    def _offer_grpc(self, log_field: str, log_type, request, response) -> None:
        """A gRPC call's request and response as they are, in the PredictionLog field of their kind."""
        def build():
            return prediction_log_pb2.PredictionLog(**{log_field: log_type(request=request, response=response)})

        self._offer(request.model_spec.name, response.model_spec, build)

    @_never_raises
    def rest_predict(self, model_name: str, addressed, version: int, signature, inputs, outputs) -> None:
        """A REST predict, logged as the PredictRequest/PredictResponse it is equivalent to. `addressed()` gives
        the URL's model spec (name, and version or label when the URL named one), built only for a record that
        is logged; numpy arrays are turned into TensorProtos on the writer thread."""
        if not self._wants(model_name):
            return

        def build():
            request = predict_pb2.PredictRequest(model_spec=addressed())
            request.model_spec.signature_name = signature.name
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(proto_from_array(value, signature.input_dtypes[key]))
            response = predict_pb2.PredictResponse(model_spec=_resolved(model_name, version, signature.name))
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(proto_from_array(value, signature.output_dtypes[key]))
            return prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request, response=response)
            )

        self._offer(model_name, _resolved(model_name, version, signature.name), build, sampled=True)

    @_never_raises
    def rest_examples(self, model_name: str, api: str, addressed, version: int, signature_name: str, model_input,
                      result) -> None:
        """A REST classify or regress, logged as the Classification/Regression request and response."""
        if not self._wants(model_name):
            return
        spec = _resolved(model_name, version, signature_name)
        request_type, response_type, log_field, log_type = (
            (classification_pb2.ClassificationRequest, classification_pb2.ClassificationResponse, "classify_log",
             prediction_log_pb2.ClassifyLog)
            if api == "classify"
            else (regression_pb2.RegressionRequest, regression_pb2.RegressionResponse, "regress_log",
                  prediction_log_pb2.RegressLog)
        )  # fmt: skip

        def build():
            request = request_type(model_spec=addressed(), input=model_input)
            request.model_spec.signature_name = signature_name
            response = response_type(model_spec=spec, result=result)
            return prediction_log_pb2.PredictionLog(**{log_field: log_type(request=request, response=response)})

        self._offer(model_name, spec, build, sampled=True)

    def _wants(self, model_name: str) -> bool:
        settings = self._models.get(model_name)
        return settings is not None and self._sample() < settings.rate

    def _offer(self, model_name: str, spec, build, sampled: bool = False) -> None:
        settings = self._models.get(model_name)
        if settings is None or not (sampled or self._sample() < settings.rate):
            return
        pending = _Pending(model_name, spec.version.value, settings.prefix,
                           _with_metadata(build, spec, settings.sampling, self._tags, int(time.time())))
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            self._metrics.request_log_count.inc(model_name, DROPPED)

    # ----- writer thread ------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        files: dict[tuple[str, str, int], LogFile] = {}
        while True:
            try:
                pending = self._queue.get(timeout=IDLE_CHECK_SECONDS)
            except queue.Empty:
                pending = False
            if pending is None:
                break
            if pending:
                self._metrics.request_log_count.inc(pending.model_name, self._write(files, pending))
            if pending is False or self._queue.empty():
                self._rotate(files, idle=pending is False)
        for current in files.values():
            self._close(current)

    def _write(self, files: dict, pending: _Pending) -> str:
        key = (pending.prefix, pending.model_name, pending.version)
        current = files.get(key)
        if current is None:
            self._sequence += 1
            current = self._open(key, self._sequence, {f.path for f in files.values()})
            if current is None:
                return FAILED
            files[key] = current
        try:
            record = pending.build().SerializeToString()
        except Exception:  # noqa: BLE001 - a record that cannot be built fails alone
            log.exception("Request log: could not build the record of a %s request", pending.model_name)
            return FAILED
        try:
            current.write(record)
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: keep what is whole, open a new file next time
            self._report(current.folder.where, exc)
            del files[key]
            self._close(current)
            return FAILED
        return LOGGED

    def _open(self, key, sequence: int, open_here: set) -> LogFile | None:
        prefix, model_name, version = key
        folder = VersionLogFolder(prefix, model_name, version)
        try:
            folder.local.mkdir(parents=True, exist_ok=True)
            folder.recover_abandoned(open_here)
            opened = LogFile(folder, sequence)
        except Exception as exc:  # noqa: BLE001 - whatever the storage raises, the record fails, not the server
            self._report(folder.where, exc)
            return None
        self._reported.discard(folder.where)
        return opened

    def _rotate(self, files: dict, idle: bool) -> None:
        for key, current in list(files.items()):
            if current.is_due(self._limits):
                self._close(files.pop(key))
            elif idle:
                try:
                    current.flush()  # so a kill -9 loses as little as possible
                except Exception as exc:  # noqa: BLE001
                    self._report(current.folder.where, exc)

    def _close(self, current: LogFile) -> None:
        try:
            current.close()
        except Exception as exc:  # noqa: BLE001 - the in-progress file stays; the next writer recovers it
            self._report(current.folder.where, exc)

    def _report(self, where: str, exc: Exception) -> None:
        if where not in self._reported:
            self._reported.add(where)
            log.error("Request log: cannot write to %s (%s); its records are counted as failed, serving goes on",
                      where, exc)


def _resolved(name: str, version: int, signature_name: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = version
    return spec


def _with_metadata(build, spec, sampling, tags: list[str], timestamp: int):
    def build_with_metadata():
        record = build()
        metadata = logging_pb2.LogMetadata(model_spec=spec, sampling_config=sampling, saved_model_tags=tags,
                                           timestamp_secs=timestamp)
        record.log_metadata.CopyFrom(metadata)
        return record

    return build_with_metadata
