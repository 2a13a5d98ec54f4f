"""Model versions: discovery on disk, version policies, labels, load/unload and the status history.

Behaviour follows TF Serving's ServerCore + AspiredVersionsManager with the AvailabilityPreservingPolicy the
binary hard-codes: a new version is loaded (and warmed up) and becomes AVAILABLE before an old one is unloaded,
so a request never finds no version. Unloaded and failed versions stay in the status history as END.

Requests resolve against one immutable `_View` (labels + serving versions) that is swapped atomically, so a
request never sees a label pointing at a version that its snapshot has already dropped.

Half-written version folders are never loaded (see `VersionDiscovery`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.codec import ServingError
from serving.model_server.config import validate_transition
from serving.model_server.servable import Servable, error_code_number, has_model_file, serving_error_from_tf

log = logging.getLogger("kiln.model_server")

State = get_model_status_pb2.ModelVersionStatus.State
VERSION_DIR = re.compile(r"[0-9]+")
INT64_MAX = 2**63 - 1
SETTLE_SECONDS = 0.25
UNSETTLED_RESCAN_SECONDS = 0.1


class VersionDiscovery:
    """Finds loadable version folders under a base path.

    Guard against half-written versions: a child folder counts only if (1) its name is all digits, so staging
    folders such as `.tmp-124` or `124.partial` are ignored until renamed; (2) it holds `saved_model.pb`
    (or `model.tflite` with --prefer_tflite_model), which TensorFlow writes after the variables; and (3) its
    contents (file names, sizes, mtimes) are settled: either unchanged since the previous scan at least
    SETTLE_SECONDS earlier, or last modified more than SETTLE_SECONDS ago.
    """

    def __init__(self, prefer_tflite: bool):
        self._prefer_tflite = prefer_tflite
        self._seen: dict[str, tuple[tuple, float]] = {}

    def scan(self, base_path: str) -> tuple[dict[int, str] | None, bool]:
        """Return ({version: folder} or None if base_path is missing, whether some folder is still settling)."""
        try:
            names = os.listdir(base_path)
        except OSError:
            return None, False
        found: dict[int, str] = {}
        unsettled = False
        for name in sorted(names):
            path = os.path.join(base_path, name)
            if not VERSION_DIR.fullmatch(name) or int(name) > INT64_MAX or not os.path.isdir(path):
                continue
            if not has_model_file(path, self._prefer_tflite):
                continue
            if not self._settled(path):
                unsettled = True
                continue
            version = int(name)
            if version in found:
                log.warning(
                    "Multiple versions found for %s: %s and %s; using the last", version, found[version], path
                )
            found[version] = path
        prefix = os.path.join(base_path, "")
        for gone in [p for p in self._seen if p.startswith(prefix) and os.path.basename(p) not in names]:
            del self._seen[gone]
        return found, unsettled

    def _settled(self, path: str) -> bool:
        now = time.time()
        entries, newest = [], 0.0
        for root, _dirs, files in os.walk(path):
            for name in files:
                try:
                    stat = os.stat(os.path.join(root, name))
                except OSError:
                    return False
                entries.append(
                    (os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns)
                )
                newest = max(newest, stat.st_mtime)
        fingerprint = tuple(sorted(entries))
        previous = self._seen.get(path)
        if previous is None or previous[0] != fingerprint:
            self._seen[path] = (fingerprint, now)
            return now - newest > SETTLE_SECONDS
        return now - previous[1] >= SETTLE_SECONDS or now - newest > SETTLE_SECONDS


def aspired_versions(policy: model_server_config_pb2.ModelConfig, found: dict[int, str]) -> dict[int, str]:
    version_policy = policy.model_version_policy
    kind = version_policy.WhichOneof("policy_choice")
    if kind == "all":
        return dict(found)
    if kind == "specific":
        wanted = set(version_policy.specific.versions)
        missing = wanted - set(found)
        if missing:
            log.warning(
                "Version(s) %s of servable %s not found under %s",
                sorted(missing),
                policy.name,
                policy.base_path,
            )
        return {v: p for v, p in found.items() if v in wanted}
    keep = max(version_policy.latest.num_versions, 1) if kind == "latest" else 1
    return {v: found[v] for v in sorted(found, reverse=True)[:keep]}


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
    ):
        self._options = options
        self._load_servable = load
        self._warmup = warmup
        self._on_load_attempt = on_load_attempt
        self._discovery = VersionDiscovery(prefer_tflite)
        self._config = model_server_config_pb2.ModelServerConfig()
        self._models: dict[str, ModelRecord] = {}
        self._view = _View({}, {})
        self._state_lock = threading.Lock()
        self._reconcile_lock = threading.RLock()
        self._stop = threading.Event()
        # Bumped by every reload request: a load waiting to retry gives up, as TF Serving stops retrying a
        # version the new config may no longer aspire to, and the reload does not wait out the retry interval.
        self._config_generation = 0
        self._wake = threading.Condition()
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

    # ----- configuration ------------------------------------------------------------------------------------
    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig:
        return self._config

    def reload_config(
        self, new_config: model_server_config_pb2.ModelServerConfig, initial: bool = False
    ) -> None:
        """Apply a ModelServerConfig; blocks until added models are AVAILABLE (raises UNKNOWN if they fail)."""
        with self._wake:
            self._config_generation += 1
            self._wake.notify_all()
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
        with self._wake:
            self._wake.notify_all()
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
        if model is None:
            aspired: dict[int, str] = {}
        else:
            found, unsettled = self._discovery.scan(model.base_path)
            if found is None:
                log.error("Could not find base path %s for servable %s", model.base_path, name)
                return {}, False
            if not found and not unsettled:
                log.warning(
                    "No versions of servable %s found under base path %s. Did you forget to name your leaf "
                    "directory as a number (eg. '/1/')?", name, model.base_path,
                )  # fmt: skip
            aspired = aspired_versions(model, found)
        with self._state_lock:
            record = self._models.setdefault(name, ModelRecord())
            record.failed &= set(aspired)
            to_load = [
                v for v in sorted(aspired, reverse=True)
                if v not in record.failed and (v not in record.versions or record.versions[v].state == State.END)
            ]  # fmt: skip
        for version in to_load:
            if self._stop.is_set():
                break
            self._load(name, version, aspired[version])
        with self._state_lock:
            ready = sorted(
                v for v, r in record.versions.items() if r.state == State.AVAILABLE and v not in aspired
            )
            aspired_ready = any(
                record.versions.get(v, VersionRecord(State.END)).state == State.AVAILABLE for v in aspired
            )
            to_unload = ready if (aspired_ready or not aspired) else ready[:-1]
            for version in to_unload:
                record.versions[version].state = State.UNLOADING
            self._publish()
        for version in to_unload:
            log.info("Unloading servable version {name: %s version: %d}", name, version)
            with self._state_lock:
                entry = record.versions[version]
                entry.servable, entry.state = None, State.END
        return aspired, unsettled

    def _load(self, name: str, version: int, path: str) -> None:
        with self._state_lock:
            record = self._models[name]
            record.versions[version] = VersionRecord(State.START)
            record.versions[version].state = State.LOADING
        log.info("Loading servable version {name: %s version: %d} from %s", name, version, path)
        attempts = self._options.max_num_load_retries + 1
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
                self._publish()
                log.info("Successfully loaded servable version {name: %s version: %d}", name, version)
            else:
                entry.state, entry.error_code, entry.error_message = State.END, error.code, error.message
                record.failed.add(version)

    def _wait_to_retry(self, generation: int) -> bool:
        """Sleep the retry interval; False if the server stops or a new config arrives meanwhile."""
        deadline = time.monotonic() + self._options.load_retry_interval_seconds
        with self._wake:
            while not self._stop.is_set() and self._config_generation == generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                self._wake.wait(remaining)
        return False

    def _publish(self, labels: dict[str, dict[str, int]] | None = None) -> None:
        """Swap in a new request view; caller holds _state_lock."""
        serving = {
            name: {
                v: r.servable for v, r in record.versions.items() if r.state == State.AVAILABLE and r.servable
            }
            for name, record in self._models.items()
        }
        self._view = _View(self._view.labels if labels is None else labels, serving)
