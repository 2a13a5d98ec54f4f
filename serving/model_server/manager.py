"""The model manager: applies ModelServerConfigs, keeps the version labels and resolves requests to servables
(TF Serving's ServerCore + AspiredVersionsManager). For each configured model it runs discovery on disk
(`discovery`), asks the availability-preserving policy what to load and unload (`availability_policy`) and
has `loading` carry it out and keep the status history.

Requests resolve against one immutable `_View` (labels + serving versions) that is swapped atomically, so a
request never sees a label pointing at a version that its snapshot has already dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.codec import ServingError
from serving.model_server.availability_policy import versions_to_load, versions_to_unload
from serving.model_server.config import validate_transition
from serving.model_server.discovery import VersionDiscovery, aspired_versions
from serving.model_server.loading import ModelRecord, State, VersionLoader, status_response
from serving.model_server.servable import Servable

log = logging.getLogger("kiln.model_server")

UNSETTLED_RESCAN_SECONDS = 0.1


@dataclass(frozen=True)
class _View:
    labels: dict[str, dict[str, int]]
    serving: dict[str, dict[int, Servable]]


@dataclass(frozen=True)
class ManagerOptions:
    file_system_poll_wait_seconds: float = 1
    allow_version_labels_for_unavailable_models: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60


class ModelManager:
    def __init__(
        self,
        options: ManagerOptions,
        load: Callable[[str], Servable],
        warmup: Callable[[str, Servable], None] | None = None,
        on_load_attempt: Callable[[str, bool, float], None] | None = None,
        prefer_tflite: bool = False,
        after_versions_change: Callable[[], None] | None = None,
        on_config: Callable[[model_server_config_pb2.ModelServerConfig], None] | None = None,
    ):
        self._options = options
        # Told every accepted config before its models load (the request logger takes its logging_configs).
        self._on_config = on_config
        # Runs after a reconcile loaded or unloaded anything (the server freezes the heap there: see heap.py).
        self._after_versions_change = after_versions_change
        self._discovery = VersionDiscovery(prefer_tflite)
        self._config = model_server_config_pb2.ModelServerConfig()
        self._models: dict[str, ModelRecord] = {}
        self._view = _View({}, {})
        self._state_lock = threading.Lock()
        self._reconcile_lock = threading.RLock()
        self._stop = threading.Event()
        self._loader = VersionLoader(
            load,
            warmup,
            on_load_attempt,
            options.max_num_load_retries,
            options.load_retry_interval_seconds,
            self._state_lock,
            self._stop,
        )
        self._poller: threading.Thread | None = None

    # ----- request path -------------------------------------------------------------------------------------
    def resolve(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> tuple[int, Servable]:
        """The servable a request addresses, with TF Serving's errors for unknown models, versions and labels."""
        view = self._view
        if label is not None:
            labelled = view.labels.get(name, {}).get(label)
            if labelled is None:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
            version = labelled
        serving = view.serving.get(name, {})
        if version is None:
            if not serving:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            version = max(serving)
        servable = serving.get(version)
        if servable is None:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
        return version, servable

    def status(self, name: str, version: int | None = None) -> get_model_status_pb2.GetModelStatusResponse:
        with self._state_lock:
            record = self._models.get(name)
            versions = dict(record.versions) if record else {}
        return status_response(name, versions, version)

    # ----- configuration ------------------------------------------------------------------------------------
    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig:
        return self._config

    def reload_config(
        self, new_config: model_server_config_pb2.ModelServerConfig, initial: bool = False
    ) -> None:
        """Apply a ModelServerConfig; blocks until added models are AVAILABLE (raises UNKNOWN if they fail)."""
        self._loader.cancel_retries()
        with self._reconcile_lock:
            validate_transition(self._config, new_config)
            if new_config.WhichOneof("config") is None:
                log.info("Taking no action for empty config.")
                return
            labels = self._label_map(new_config)
            old_names = {m.name for m in self._config.model_config_list.config}
            models = list(new_config.model_config_list.config)
            self._config = new_config
            with self._state_lock:
                self._publish(labels=labels)
            if self._on_config is not None:
                self._on_config(new_config)
            for name in old_names - {m.name for m in models}:
                self._reconcile(name, None)
            if initial:
                self._await_loads(models, "servable(s)")
                return
            for model in models:
                if model.name in old_names:
                    self._reconcile(model.name, model)
            self._await_loads([m for m in models if m.name not in old_names], "model(s)")

    def _label_map(self, config) -> dict[str, dict[str, int]]:
        """TF Serving's UpdateModelVersionLabelMap: labels may only point at AVAILABLE versions."""
        current = self._view.labels
        allow_new = self._options.allow_version_labels_for_unavailable_models
        labels: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            record = self._models.get(model.name)
            for label, version in model.version_labels.items():
                existing = current.get(model.name, {}).get(label)
                allowed = allow_new and (existing is None or existing == version)
                entry = record.versions.get(version) if record else None
                if not allowed and (entry is None or entry.state != State.AVAILABLE):
                    raise ServingError(
                        "FAILED_PRECONDITION",
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference",
                    )
                labels.setdefault(model.name, {})[label] = version
        return labels

    def _await_loads(self, models, noun: str) -> None:
        """Wait until each model's latest aspired version is AVAILABLE or has failed (forever if none appears)."""
        pending = {m.name: m for m in models}
        while pending and not self._stop.is_set():
            unsettled = False
            # Every configured model keeps being polled while the new ones are awaited.
            for model in list(self._config.model_config_list.config):
                aspired, settling = self._reconcile(model.name, model)
                unsettled |= settling
                if aspired:
                    pending.pop(model.name, None)
            if pending:
                delay = (
                    UNSETTLED_RESCAN_SECONDS
                    if unsettled
                    else max(self._options.file_system_poll_wait_seconds, 0.1)
                )
                self._stop.wait(delay)
        self._raise_unavailable([m.name for m in models], noun)

    def _raise_unavailable(self, names: list[str], noun: str) -> None:
        failures = []
        with self._state_lock:
            for name in names:
                record = self._models.get(name)
                if record is None or any(r.state == State.AVAILABLE for r in record.versions.values()):
                    continue
                version = max(record.versions) if record.versions else 0
                entry = record.versions.get(version)
                error = (
                    f" due to error: {entry.error_code}: {entry.error_message}"
                    if entry and entry.error_code != "OK"
                    else ""
                )
                failures.append(f"{{{{name: {name} version: {version}}}{error}}}, ")
        if failures:
            raise ServingError(
                "UNKNOWN", f"{len(failures)} {noun} did not become available: {{{''.join(failures)}}}"
            )

    # ----- polling ------------------------------------------------------------------------------------------
    def start_polling(self) -> None:
        if self._options.file_system_poll_wait_seconds <= 0 or self._poller is not None:
            return
        self._poller = threading.Thread(target=self._poll_loop, name="file-system-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        self._loader.wake()
        if self._poller is not None:
            self._poller.join(timeout=5)

    def _poll_loop(self) -> None:
        delay = self._options.file_system_poll_wait_seconds
        while not self._stop.wait(delay):
            unsettled = self.poll_once()
            delay = UNSETTLED_RESCAN_SECONDS if unsettled else self._options.file_system_poll_wait_seconds

    def poll_once(self) -> bool:
        unsettled = False
        with self._reconcile_lock:
            for model in list(self._config.model_config_list.config):
                try:
                    unsettled |= self._reconcile(model.name, model)[1]
                except Exception:  # noqa: BLE001 - one broken model must not stop polling for the others
                    log.exception("Polling model %s failed", model.name)
        return unsettled

    # ----- version transitions ------------------------------------------------------------------------------
    def _reconcile(self, name: str, model) -> tuple[dict[int, str], bool]:
        """Load new aspired versions, then unload un-aspired ones (availability preserving)."""
        unsettled = False
        # Loaded versions whose folder is still there, complete or not, stay loaded (see `discovery`).
        still_there: set[int] = set()
        if model is None:
            aspired: dict[int, str] = {}
        else:
            scan = self._discovery.scan(model.base_path)
            if scan.found is None:
                log.error("Could not find base path %s for servable %s", model.base_path, name)
                return {}, False
            unsettled = scan.settling
            if not scan.found and not unsettled:
                log.warning(
                    "No versions of servable %s found under base path %s. Did you forget to name your leaf "
                    "directory as a number (eg. '/1/')?", name, model.base_path,
                )  # fmt: skip
            aspired = aspired_versions(model, scan.found)
            still_there = set(aspired_versions(model, dict.fromkeys(scan.present, ""), warn=False))
        with self._state_lock:
            record = self._models.setdefault(name, ModelRecord())
            record.failed &= set(aspired)
            to_load = versions_to_load(record, aspired)
        for version in to_load:
            if self._stop.is_set():
                break
            self._loader.load(record, name, version, aspired[version], self._publish)
        with self._state_lock:
            to_unload = [v for v in versions_to_unload(record, aspired) if v not in still_there]
            for version in to_unload:
                record.versions[version].state = State.UNLOADING
            self._publish()
        for version in to_unload:
            self._loader.unload(record, name, version)
        if (to_load or to_unload) and self._after_versions_change is not None:
            self._after_versions_change()
        return aspired, unsettled

    def _publish(self, labels: dict[str, dict[str, int]] | None = None) -> None:
        """Swap in a new request view; caller holds _state_lock."""
        serving = {
            name: {
                v: r.servable for v, r in record.versions.items() if r.state == State.AVAILABLE and r.servable
            }
            for name, record in self._models.items()
        }
        self._view = _View(self._view.labels if labels is None else labels, serving)
