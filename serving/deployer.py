"""Ship SavedModels to a TF Serving instance through its protocol only, and keep it as wanted.

The server is the truth: the deployer reads which versions are AVAILABLE (`GetModelStatus`) and where
the labels point (as the server resolves them) instead of trusting its own copy of `models.config`.
`reconcile` brings one model to a desired state — `stable`, `canary` and versions to keep loaded
(the previous stable: the rollback target) — in TF Serving's two steps: load (with the current labels
left where they are), wait until AVAILABLE, then move the labels (TF Serving only labels AVAILABLE
versions). Any failure puts the model's previous state back on the server and raises. Version folders
no longer wanted are deleted afterwards.

`models.config` (a ModelServerConfig text proto) is written after every change: TF Serving reads it at
start (a restarted server comes back as it was) and a reload must name every model, so it also carries
the other models' entries. A version folder is copied to `<base>/<model>/.staging-*` and renamed to
`<base>/<model>/<version>/` (TF Serving only loads numeric folder names, so a half-copied folder is
invisible). Changes are serialized by a lock file beside `models.config` (`lock()`): a pipeline's push
and a serving sync may run at the same moment, and a reconcile is a read-modify-write of the server.

The model base path and `models.config` may be fsspec URLs (`s3://bucket/models`: TF Serving reads S3 with
its own file system, kiln-model-server through a local cache). Object storage has no rename, so a version
is uploaded file by file straight to `<base>/<model>/<version>/` with `model.tflite` and then
`saved_model.pb` last: TF Serving (and kiln-model-server) take a folder for a SavedModel only once
`saved_model.pb` is there, and by then every other file is. Uploading to a non-numeric prefix and copying
would buy nothing: S3's copies are per object too, the numeric folder would fill file by file all the
same. Besides, the server loads only the versions `models.config` names (`specific`), and a version is
named only after its upload finished. A version is removed in the reverse order (`saved_model.pb`
first). `models.config` is replaced by one PUT, atomic on S3. The lock is then a file in the machine's
temp folder: it serializes the deployers of one machine, not of several (see the README).
"""

from __future__ import annotations

import filecmp
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from common import storage
from serving.client import GrpcModelService, RestClient
from serving.target import RequestLog, ServingTarget

log = logging.getLogger(__name__)

STABLE, CANARY = "stable", "canary"
# What makes a version folder loadable, uploaded last and removed first (see the module's docstring).
COMPLETES_VERSION = ("model.tflite", "saved_model.pb")
FILE_LOG_COLLECTOR = "file"  # the log collector kiln-model-server implements (TF Serving's open-source build: none)


class DeployError(RuntimeError):
    """A push or promotion that did not happen; the server was put back as it was."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    versions: tuple[int, ...]
    labels: dict[str, int]


def read_config(path: Path | str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    if storage.exists(path):
        try:
            text_format.Parse(storage.read_text(path), config)
        except text_format.ParseError as exc:
            raise DeployError(f"{path}: not a ModelServerConfig text proto: {exc}") from None
    else:
        config.model_config_list.SetInParent()
    return config


def write_config(path: Path | str, config: model_server_config_pb2.ModelServerConfig) -> None:
    storage.write_text(path, text_format.MessageToString(config))  # a rename locally, one PUT on S3


def _set_logging(entry: model_server_config_pb2.ModelConfig, request_log: RequestLog | None) -> None:
    """Write (or, with None, remove) TF Serving's logging_config in a model's config entry."""
    entry.ClearField("logging_config")
    if request_log is None:
        return
    entry.logging_config.log_collector_config.type = FILE_LOG_COLLECTOR
    entry.logging_config.log_collector_config.filename_prefix = request_log.path
    entry.logging_config.sampling_config.sampling_rate = request_log.sampling_rate


def _same_tree(left: Path, right: Path) -> bool:
    cmp = filecmp.dircmp(left, right)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(left / d, right / d) for d in cmp.common_dirs)


class ServingDeployer:
    def __init__(self, target: ServingTarget, model_service: GrpcModelService | None = None, load_timeout: float = 180,
                 lock_timeout: float = 600, request_logs: Mapping[str, RequestLog | None] | None = None):
        self.target = target
        # The models whose logging_config this deployer owns (None: logging off); other models' stay as they are.
        self.request_logs = dict(request_logs or {})
        self.load_timeout = load_timeout
        self.models = model_service or GrpcModelService(target.grpc_address, timeout=load_timeout)
        self.base = str(target.model_base_path)
        if storage.is_local(target.config_file):
            config_file = storage.local_path(target.config_file)
            config_file.parent.mkdir(parents=True, exist_ok=True)
            lock_file = f"{config_file}.lock"
        else:  # no lock files on object storage: one on this machine, named after the config's URL
            digest = hashlib.sha256(str(target.config_file).encode()).hexdigest()[:16]
            locks = Path(tempfile.gettempdir()) / "kiln-locks"
            locks.mkdir(parents=True, exist_ok=True)
            lock_file = str(locks / f"models-config-{digest}.lock")
        # Reentrant: reconcile takes it again inside. Bounded: a deployer that hangs holding it costs the others
        # `lock_timeout` seconds and a filelock.Timeout naming the lock file, not a wait without end.
        self._lock = FileLock(lock_file, timeout=lock_timeout)

    def version_dir(self, name: str, version: int) -> Path | str:
        """`<base>/<name>/<version>`: a Path on a local base path, a URL on object storage."""
        if storage.is_local(self.base):
            return storage.local_path(self.base) / name / str(version)
        return storage.join(self.base, name, str(version))

    def lock(self) -> AbstractContextManager[object]:
        """Hold while deciding and applying a change, so no other deployer changes the server meanwhile."""
        return self._lock

    # -- state, as the server reports it -------------------------------------------------------
    def served(self, name: str) -> ServedModel:
        """AVAILABLE versions and kiln's labels as the server reports them (empty: not served)."""
        states = self.models.version_states(name)
        versions = tuple(sorted(v for v, state in states.items() if state == "AVAILABLE"))
        labels: dict[str, int] = {}
        if versions:
            with RestClient(self.target.rest_url, timeout=30) as rest:
                for label in (STABLE, CANARY):
                    version = rest.label_version(name, label)
                    if version is not None:
                        labels[label] = version
        return ServedModel(name, versions, labels)

    def _entry(self, config, name: str):
        return next((c for c in config.model_config_list.config if c.name == name), None)

    def _with_model(self, name: str, versions: Iterable[int], labels: dict[str, int], set_logging: bool = True):
        """The whole server config with this model's entry set (the other models' entries as last applied);
        `set_logging=False` leaves the entry's logging_config as last applied (the state a rollback restores)."""
        config = read_config(self.target.config_file)
        versions = sorted(set(versions))
        if not versions:
            kept = [c for c in config.model_config_list.config if c.name != name]
            config.model_config_list.ClearField("config")
            config.model_config_list.config.extend(kept)
            return config
        entry = self._entry(config, name) or config.model_config_list.config.add(name=name)
        entry.base_path = (str((storage.local_path(self.base) / name).resolve()) if storage.is_local(self.base)
                           else storage.join(self.base, name))
        entry.model_platform = "tensorflow"
        entry.model_version_policy.specific.ClearField("versions")
        entry.model_version_policy.specific.versions.extend(versions)
        entry.ClearField("version_labels")
        for label, version in labels.items():
            entry.version_labels[label] = version
        if set_logging and name in self.request_logs:
            _set_logging(entry, self.request_logs[name])
        return config

    def _logging_outdated(self, name: str) -> bool:
        """The model's entry in models.config does not log as this deployer is told to."""
        if name not in self.request_logs:
            return False
        entry = self._entry(read_config(self.target.config_file), name)
        if entry is None:
            return False  # not served: there is nothing to log, and a reconcile that serves it writes the entry
        wanted = model_server_config_pb2.ModelConfig()
        _set_logging(wanted, self.request_logs[name])
        return entry.logging_config != wanted.logging_config

    # -- steps ---------------------------------------------------------------------------------
    def stage_version(self, name: str, version: int, saved_model_dir: Path,
                      extra_files: dict[str, Path]) -> Path | str:
        """Copy a local SavedModel (+ extras, e.g. model.tflite) to `<base>/<name>/<version>/` atomically.

        A retry that finds the same content in place is a no-op; different content under an existing
        version number is refused, because TF Serving never reloads an overwritten version folder.
        """
        if not storage.is_local(self.base):
            return self._upload_version(name, version, saved_model_dir, extra_files)
        model_dir = storage.local_path(self.base) / name
        model_dir.mkdir(parents=True, exist_ok=True)
        final = model_dir / str(version)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
        try:
            shutil.copytree(saved_model_dir, staging, dirs_exist_ok=True)
            for relative, source in extra_files.items():
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, staging / relative)
            if final.exists():
                if not _same_tree(staging, final):
                    raise DeployError(f"{final} already exists with different content; refusing to overwrite")
                return final
            os.replace(staging, final)
            return final
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _upload_version(self, name: str, version: int, saved_model_dir: Path, extra_files: dict[str, Path]) -> str:
        final = storage.join(self.base, name, str(version))
        with tempfile.TemporaryDirectory(prefix=f"kiln-version-{version}-") as scratch:
            staging = Path(scratch) / str(version)
            shutil.copytree(saved_model_dir, staging)
            for relative, source in extra_files.items():
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, staging / relative)
            if self.is_staged(name, version):
                if not _same_tree(staging, storage.localize(final)):
                    raise DeployError(f"{final} already exists with different content; refusing to overwrite")
                return final
            storage.remove(final, first=COMPLETES_VERSION)  # the leftovers of an upload that died midway
            storage.upload_dir(staging, final, last=COMPLETES_VERSION)
        return final

    def is_staged(self, name: str, version: int) -> bool:
        """The version folder is complete: its model file (`model.tflite` or `saved_model.pb`, whichever it
        ships; uploaded last) is there."""
        folder = storage.join(self.base, name, str(version))
        return any(storage.exists(storage.join(folder, model_file)) for model_file in COMPLETES_VERSION)

    def reconcile(self, name: str, stable: int | None, canary: int | None = None,
                  keep: Iterable[int] = ()) -> ServedModel:
        """Serve `stable` and `canary` under those labels, plus `keep` loaded and unlabelled; nothing else."""
        with self.lock():
            return self._reconcile(name, stable, canary, keep)

    def _reconcile(self, name: str, stable: int | None, canary: int | None, keep: Iterable[int]) -> ServedModel:
        labels = {label: v for label, v in ((STABLE, stable), (CANARY, canary)) if v is not None}
        wanted = set(labels.values()) | {v for v in keep if v is not None}
        current = self.served(name)
        if set(current.versions) == wanted and current.labels == labels and not self._logging_outdated(name):
            return current
        before = self._with_model(name, current.versions, current.labels, set_logging=False)
        try:
            # Step 1: load what is wanted beside what serves now; labels stay where they point.
            loading = wanted | set(current.labels.values())
            self._apply(self._with_model(name, loading, current.labels))
            for version in sorted(wanted - set(current.versions)):
                self.models.wait_available(name, version, timeout=self.load_timeout)
            # Step 2: move the labels onto AVAILABLE versions; drop the rest.
            self._apply(self._with_model(name, wanted, labels))
        except Exception as exc:
            self._restore(before)
            raise DeployError(f"{name}: serving {labels or 'nothing'} failed and was rolled back: {exc}") from exc
        self._collect_garbage(name, set(current.versions) - wanted)
        log.info("reconciled %s: versions %s, labels %s (was %s, %s)", name, sorted(wanted), labels,
                 list(current.versions), current.labels)
        return ServedModel(name, tuple(sorted(wanted)), labels)

    def push_version(self, name: str, version: int, keep: Iterable[int] = ()) -> ServedModel:
        """Load a staged version beside the current stable one and label it canary."""
        with self.lock():
            stable = self.served(name).labels.get(STABLE)
            try:
                served = self.reconcile(name, stable=stable, canary=version, keep=keep)
            except DeployError as exc:
                raise DeployError(f"push of {name} version {version} failed and was rolled back: {exc.__cause__}") \
                    from exc
        log.info("pushed %s version %s (canary); stable is %s", name, version, stable)
        return served

    def unstage(self, name: str, version: int) -> None:
        """Delete a staged version folder the server does not serve (a push that did not happen)."""
        with self.lock():
            if version in self.served(name).versions:
                raise DeployError(f"{name} version {version} is served; reconcile it away instead")
            storage.remove(self.version_dir(name, version), first=COMPLETES_VERSION)

    def _collect_garbage(self, name: str, dropped: set[int]) -> None:
        """Delete the folders of versions the server just stopped serving (MLflow keeps every version's
        artifacts; a sync brings one back). Staged versions not yet pushed stay."""
        for version in dropped:
            folder = self.version_dir(name, version)
            storage.remove(folder, first=COMPLETES_VERSION)
            log.info("removed %s (no longer served)", folder)

    def _apply(self, config) -> None:
        self.models.reload_config(config)
        write_config(self.target.config_file, config)

    def _restore(self, config) -> None:
        try:
            self._apply(config)
        except Exception as exc:  # the original error matters more; this one is logged
            log.error("could not restore the previous serving config: %s", exc)
