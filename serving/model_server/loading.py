"""Loading and unloading servable versions, with retries, and their status history: TF Serving's BasicManager /
LoaderHarness (a version goes START -> LOADING -> AVAILABLE, or to END with its error once its retries are
spent) and ServableStateMonitor (unloaded and failed versions stay in the history as END).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tensorflow_serving.apis import get_model_status_pb2

from serving.codec import ServingError
from serving.model_server.saved_model_servable import SavedModelServable
from serving.model_server.servable import (
    SAVED_MODEL_FILES,
    SERVE_TAG,
    TFLITE_FILE,
    Servable,
    error_code_number,
    serving_error_from_tf,
)
from serving.model_server.tflite_servable import TFLiteServable

log = logging.getLogger("kiln.model_server")

State = get_model_status_pb2.ModelVersionStatus.State


@dataclass
class VersionRecord:
    state: int
    error_code: str = "OK"
    error_message: str = ""
    servable: Servable | None = None


@dataclass
class ModelRecord:
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)


def status_response(
    name: str, versions: dict[int, VersionRecord], version: int | None
) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatus from a copy of a model's history: all versions, newest first, or the one asked for."""
    if not versions:
        raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
    if version is not None:
        if version not in versions:
            raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
        versions = {version: versions[version]}
    response = get_model_status_pb2.GetModelStatusResponse()
    for number in sorted(versions, reverse=True):
        entry = versions[number]
        status = response.model_version_status.add(version=number, state=entry.state)
        status.status.error_code = error_code_number(entry.error_code)
        status.status.error_message = entry.error_message
    return response


class VersionLoader:
    """Loads (with warmup and retries) and unloads versions, writing their states into the caller's
    ModelRecords under the caller's state lock."""

    def __init__(
        self,
        load: Callable[[str], Servable],
        warmup: Callable[[str, Servable], None] | None,
        on_load_attempt: Callable[[str, bool, float], None] | None,
        max_num_load_retries: int,
        load_retry_interval_seconds: float,
        state_lock: threading.Lock,
        stop: threading.Event,
    ):
        self._load_servable = load
        self._warmup = warmup
        self._on_load_attempt = on_load_attempt
        self._max_num_load_retries = max_num_load_retries
        self._load_retry_interval_seconds = load_retry_interval_seconds
        self._state_lock = state_lock
        self._stop = stop
        # Bumped by every reload request: a load waiting to retry gives up, as TF Serving stops retrying a
        # version the new config may no longer aspire to, and the reload does not wait out the retry interval.
        self._config_generation = 0
        self._wake = threading.Condition()

    def cancel_retries(self) -> None:
        """A reload request arrived: loads waiting to retry give up."""
        with self._wake:
            self._config_generation += 1
            self._wake.notify_all()

    def wake(self) -> None:
        """Wake loads waiting to retry so that they see the stop event."""
        with self._wake:
            self._wake.notify_all()

    def load(
        self, record: ModelRecord, name: str, version: int, path: str, publish: Callable[[], None]
    ) -> None:
        """Load one version into ``record``; ``publish`` runs under the state lock once it is AVAILABLE."""
        with self._state_lock:
            record.versions[version] = VersionRecord(State.START)
            record.versions[version].state = State.LOADING
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        attempts = self._max_num_load_retries + 1
        generation = self._config_generation
        error: ServingError | None = None
        servable = None
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                servable = self._load_servable(path)
                if self._warmup is not None:
                    self._warmup(path, servable)
                error = None
            except Exception as exc:  # noqa: BLE001 - any load failure ends the version with its status
                error = serving_error_from_tf(exc)
                servable = None
                log.error(
                    "Servable {name: %s version: %d} cannot be loaded: %s", name, version, error.message
                )
            if self._on_load_attempt is not None:
                self._on_load_attempt(path, error is None, time.perf_counter() - started)
            if error is None or attempt == attempts - 1 or not self._wait_to_retry(generation):
                break
        with self._state_lock:
            entry = record.versions[version]
            if error is None:
                entry.servable, entry.state = servable, State.AVAILABLE
                publish()
                log.info("Successfully loaded servable version {name: %s version: %d}", name, version)
            else:
                entry.state, entry.error_code, entry.error_message = State.END, error.code, error.message
                record.failed.add(version)

    def unload(self, record: ModelRecord, name: str, version: int) -> None:
        log.info("Unloading servable version {name: %s version: %d}", name, version)
        with self._state_lock:
            entry = record.versions[version]
            entry.servable, entry.state = None, State.END

    def _wait_to_retry(self, generation: int) -> bool:
        """Sleep the retry interval; False if the server stops or a new config arrives meanwhile."""
        deadline = time.monotonic() + self._load_retry_interval_seconds
        with self._wake:
            while not self._stop.is_set() and self._config_generation == generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                self._wake.wait(remaining)
        return False


def load_servable(
    version_dir: str, prefer_tflite: bool = False, tags: Sequence[str] = (SERVE_TAG,)
) -> Servable:
    if prefer_tflite and os.path.isfile(os.path.join(version_dir, TFLITE_FILE)):
        return TFLiteServable(version_dir)
    if not any(os.path.isfile(os.path.join(version_dir, name)) for name in SAVED_MODEL_FILES):
        raise ServingError(
            "NOT_FOUND",
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {version_dir}. "
            "Check that the directory exists and that you have the right permissions for accessing it.",
        )
    return SavedModelServable(version_dir, tags)
