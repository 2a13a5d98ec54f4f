"""A client for TensorFlow Serving's protocol (REST for predictions, gRPC for model management).

Everything in kiln talks to serving through this module, so the real `tensorflow_model_server`
and `kiln-model-server` are interchangeable behind it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import httpx


class ServingClientError(RuntimeError):
    """The model server refused a request or did not reach the wanted state in time."""


class ServingUnavailable(ServingClientError):
    """The model server did not answer (refused, reset, timed out), after the retries asked for."""


# A server that restarts looks like this from here; anything else is an answer or a bug.
TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Prediction:
    outputs: Any  # the "predictions" value of TF Serving's row-format response
    latency_ms: float

    def rows(self, output_names: list[str]) -> list[dict[str, Any]]:
        """One {output name: value} per instance: TF Serving leaves the name out when the signature
        has a single output, so it is put back here."""
        if len(output_names) == 1 and self.outputs and not isinstance(self.outputs[0], dict):
            return [{output_names[0]: value} for value in self.outputs]
        return list(self.outputs)


@dataclass(frozen=True)
class VersionStatus:
    """One entry of GetModelStatus: a version's state and the status of its last transition."""

    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: int = 0  # tensorflow.error.Code; 0 is OK
    error_message: str = ""

    @property
    def failed(self) -> bool:
        """A load that ended in an error (START -> LOADING -> END with a non-OK status); an unloaded version
        is END with an OK status."""
        return self.state == "END" and self.error_code != 0

    @property
    def error(self) -> str:
        from tensorflow.core.protobuf import error_codes_pb2  # GetModelStatus has loaded it already

        codes = error_codes_pb2.Code
        name = codes.Name(self.error_code) if self.error_code in codes.values() else str(self.error_code)
        return f"{name}: {self.error_message}" if self.error_message else name


def version_path(model: str, version: int | None = None, label: str | None = None) -> str:
    if version is not None and label is not None:
        raise ValueError("pass a version or a label, not both")
    if version is not None:
        return f"/v1/models/{model}/versions/{version}"
    if label is not None:
        return f"/v1/models/{model}/labels/{label}"
    return f"/v1/models/{model}"


class RestClient:
    """Predict and status over TF Serving's REST API; light enough for the CLI (no TensorFlow).

    A server that does not answer is a ServingUnavailable (one line), never an httpx error. Reads (GET)
    are retried through transport errors with exponential backoff for `retry_for` seconds (0: not
    retried); a predict (POST) is sent once.
    """

    def __init__(self, base_url: str, timeout: float = 30.0, retry_for: float = 0.0):
        self.base_url = base_url.rstrip("/")
        self.retry_for = retry_for
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict(
        self,
        model: str,
        instances: Sequence[Any],
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
    ) -> Prediction:
        body: dict[str, Any] = {"instances": list(instances)}
        if signature_name:
            body["signature_name"] = signature_name
        started = time.perf_counter()
        response = self._send("POST", f"{version_path(model, version, label)}:predict", content=json.dumps(body))
        latency_ms = (time.perf_counter() - started) * 1000
        return Prediction(outputs=self._json(response)["predictions"], latency_ms=latency_ms)

    def status(self, model: str, version: int | None = None, label: str | None = None) -> list[dict[str, Any]]:
        """The model_version_status list (newest first, END entries included)."""
        return self._json(self._get(version_path(model, version, label)))["model_version_status"]

    def label_version(self, model: str, label: str) -> int | None:
        """The version a label points at, or None when the server knows no such label.

        Read through the metadata route: TF Serving's status route ignores labels (it answers every
        version, even for an unknown label), while GetModelMetadata resolves them.
        """
        response = self._get(f"{version_path(model, label=label)}/metadata")
        if response.status_code == 400 and "Unrecognized servable version label" in response.text:
            return None  # TF Serving's INVALID_ARGUMENT for a label it does not know
        return int(self._json(response)["model_spec"]["version"])

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServingUnavailable(f"{method} {self.base_url}{path}: {_one_line(exc)}") from None

    def _get(self, path: str) -> httpx.Response:
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

        started = time.monotonic()
        exponential = wait_exponential(multiplier=0.25, min=0.25, max=4)  # the last wait ends at the deadline
        retrying = Retrying(retry=retry_if_exception_type(TRANSIENT), stop=stop_after_delay(self.retry_for),
                            wait=lambda s: max(0.0, min(exponential(s), self.retry_for - s.seconds_since_start)),
                            reraise=True)
        try:
            return retrying(self._http.get, path)
        except httpx.HTTPError as exc:
            waited = f" (retried for {time.monotonic() - started:.0f} s)" if self.retry_for else ""
            raise ServingUnavailable(f"GET {self.base_url}{path}: {_one_line(exc)}{waited}") from None

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError:
            raise ServingClientError(
                f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}, not JSON"
            ) from None
        if response.status_code != 200:
            raise ServingClientError(
                f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}: "
                f"{payload.get('error', payload)}"
            )
        return payload


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class _GrpcClient:
    """One insecure channel to `address` and a stub of one TF Serving service on it; a context manager."""

    def __init__(self, address: str, timeout: float, stub_class: Any):
        import grpc

        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = stub_class(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GrpcModelService(_GrpcClient):
    """ModelService over gRPC: status and HandleReloadConfigRequest (imports TensorFlow protos)."""

    def __init__(self, address: str, timeout: float = 120.0):
        from tensorflow_serving.apis import model_service_pb2_grpc

        super().__init__(address, timeout, model_service_pb2_grpc.ModelServiceStub)

    def version_statuses(self, model: str) -> dict[int, VersionStatus]:
        """version -> its state and status as GetModelStatus reports them; {} when the server knows no version."""
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        try:
            response = self._stub.GetModelStatus(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise ServingClientError(f"GetModelStatus({model}) at {self.address}: {exc.details()}") from None
        states = get_model_status_pb2.ModelVersionStatus.State
        return {s.version: VersionStatus(states.Name(s.state), s.status.error_code, s.status.error_message)
                for s in response.model_version_status}

    def version_states(self, model: str) -> dict[int, str]:
        """version -> state name (AVAILABLE, END, ...); {} when the server knows no version."""
        return {version: status.state for version, status in self.version_statuses(model).items()}

    def reload_config(self, config: Any) -> None:
        """Send a ModelServerConfig; TF Serving blocks until added models are AVAILABLE."""
        import grpc
        from tensorflow_serving.apis import model_management_pb2

        request = model_management_pb2.ReloadConfigRequest(config=config)
        try:
            response = self._stub.HandleReloadConfigRequest(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise ServingClientError(f"reload config at {self.address}: {exc.code().name}: {exc.details()}") from None
        if response.status.error_code != 0:
            raise ServingClientError(f"reload config at {self.address}: {response.status.error_message}")

    def wait_available(self, model: str, version: int, timeout: float = 120.0) -> None:
        """Wait until `version` is AVAILABLE; raise when its load failed or the time is up.

        END alone is not a failure: the server's status history keeps a version it unloaded as END with an
        OK status (a folder that was removed, then staged again, reads END until the server's next file
        system poll loads it). Only END with an error status is a load that failed.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.version_statuses(model).get(version)
            if status is not None and status.state == "AVAILABLE":
                return
            if status is not None and status.failed:
                raise ServingClientError(f"{model} version {version} failed to load: {status.error}")
            if time.monotonic() > deadline:
                state = status.state if status else "unknown to the server"
                raise ServingClientError(f"{model} version {version} not AVAILABLE at {self.address} after "
                                         f"{timeout:.0f}s (state {state})")
            time.sleep(0.2)


class GrpcPredictor(_GrpcClient):
    """PredictionService.Predict over gRPC with numpy inputs (imports TensorFlow for the tensor protos)."""

    def __init__(self, address: str, timeout: float = 30.0):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        super().__init__(address, timeout, prediction_service_pb2_grpc.PredictionServiceStub)

    def predict(self, model: str, inputs: dict[str, Any], *, version: int | None = None,
                label: str | None = None) -> tuple[dict[str, Any], float]:
        """(output name -> numpy array, latency in ms)."""
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        for name, values in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
        started = time.perf_counter()
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise ServingClientError(f"Predict({model}) at {self.address}: {exc.code().name}: {exc.details()}") \
                from None
        latency_ms = (time.perf_counter() - started) * 1000
        return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}, latency_ms
