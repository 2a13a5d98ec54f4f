"""Ship SavedModels to a TF Serving instance through its protocol only.

The deployer owns the server's `models.config` (a ModelServerConfig text proto). A push copies the
SavedModel into `<base>/<model>/.staging-*` (TF Serving only loads numeric folder names, so a
half-copied folder is invisible), renames it to `<base>/<model>/<version>/`, asks the server to
load it (`HandleReloadConfigRequest`), waits for AVAILABLE and labels it `canary`. Promotion
moves `stable` to it and keeps the previous stable version loaded as the rollback target. Labels
only move onto AVAILABLE versions (TF Serving's rule), hence the two reloads per push. Any failure
puts the previous config back on the server and on disk, then raises.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.client import GrpcModelService
from serving.target import ServingTarget

log = logging.getLogger(__name__)

STABLE, CANARY = "stable", "canary"


class DeployError(RuntimeError):
    """A push or promotion that did not happen; the server was put back as it was."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    versions: tuple[int, ...]
    labels: dict[str, int]


def read_config(path: Path) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    if path.exists():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as exc:
            raise DeployError(f"{path}: not a ModelServerConfig text proto: {exc}") from None
    else:
        config.model_config_list.SetInParent()
    return config


def write_config(path: Path, config: model_server_config_pb2.ModelServerConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text_format.MessageToString(config))
    os.replace(tmp, path)


def empty_config() -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()
    return config


def _same_tree(left: Path, right: Path) -> bool:
    cmp = filecmp.dircmp(left, right)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(left, right, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(left / d, right / d) for d in cmp.common_dirs)


class ServingDeployer:
    def __init__(self, target: ServingTarget, model_service: GrpcModelService | None = None, load_timeout: float = 180):
        self.target = target
        self.load_timeout = load_timeout
        self.models = model_service or GrpcModelService(target.grpc_address, timeout=load_timeout)

    # -- state ---------------------------------------------------------------------------------
    def served(self, name: str) -> ServedModel | None:
        entry = self._entry(read_config(self.target.config_file), name)
        if entry is None:
            return None
        return ServedModel(name, tuple(entry.model_version_policy.specific.versions), dict(entry.version_labels))

    def _entry(self, config, name: str):
        return next((c for c in config.model_config_list.config if c.name == name), None)

    def _with_model(self, name: str, versions: Iterable[int], labels: dict[str, int]):
        config = read_config(self.target.config_file)
        entry = self._entry(config, name) or config.model_config_list.config.add(name=name)
        entry.base_path = str((self.target.model_base_path / name).resolve())
        entry.model_platform = "tensorflow"
        entry.model_version_policy.specific.ClearField("versions")
        entry.model_version_policy.specific.versions.extend(sorted(set(versions)))
        entry.ClearField("version_labels")
        for label, version in labels.items():
            entry.version_labels[label] = version
        return config

    # -- steps ---------------------------------------------------------------------------------
    def stage_version(self, name: str, version: int, saved_model_dir: Path, extra_files: dict[str, Path]) -> Path:
        """Copy a SavedModel (+ extras, e.g. model.tflite) to `<base>/<name>/<version>/` atomically.

        A retry that finds the same content in place is a no-op; different content under an existing
        version number is refused, because TF Serving never reloads an overwritten version folder.
        """
        model_dir = self.target.model_base_path / name
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

    def push_version(self, name: str, version: int) -> ServedModel:
        """Load a staged version next to the current stable one and label it canary."""
        before = read_config(self.target.config_file)
        current = self.served(name)
        stable = {STABLE: current.labels[STABLE]} if current and STABLE in current.labels else {}
        versions = [*stable.values(), version]
        try:
            self._apply(self._with_model(name, versions, stable))
            self.models.wait_available(name, version, timeout=self.load_timeout)
            self._apply(self._with_model(name, versions, {**stable, CANARY: version}))
        except Exception as exc:
            self._restore(before)
            raise DeployError(f"push of {name} version {version} failed and was rolled back: {exc}") from exc
        log.info("pushed %s version %s (canary); stable is %s", name, version, stable.get(STABLE))
        return ServedModel(name, tuple(sorted(set(versions))), {**stable, CANARY: version})

    def promote(self, name: str, version: int) -> ServedModel:
        """Move `stable` to `version`; the previous stable stays loaded as the rollback target."""
        before = read_config(self.target.config_file)
        current = self.served(name)
        if current is None or version not in current.versions:
            raise DeployError(f"{name} version {version} is not pushed; push it before promoting")
        previous = current.labels.get(STABLE)
        versions = [version] + ([previous] if previous is not None else [])
        try:
            self._apply(self._with_model(name, versions, {STABLE: version}))
        except Exception as exc:
            self._restore(before)
            raise DeployError(f"promotion of {name} version {version} failed and was rolled back: {exc}") from exc
        log.info("promoted %s version %s to stable (previous stable %s)", name, version, previous)
        return ServedModel(name, tuple(sorted(set(versions))), {STABLE: version})

    def withdraw(self, name: str, version: int) -> ServedModel:
        """Take a pushed-but-unpromoted version off the server (labels and the stable version stay)."""
        current = self.served(name)
        if current is None:
            raise DeployError(f"{name} is not served; nothing to withdraw")
        labels = {k: v for k, v in current.labels.items() if v != version}
        versions = [v for v in current.versions if v != version] or list(labels.values())
        if not versions:
            config = read_config(self.target.config_file)
            kept = [c for c in config.model_config_list.config if c.name != name]
            config.model_config_list.ClearField("config")
            config.model_config_list.config.extend(kept)
            self._apply(config)
            return ServedModel(name, (), {})
        self._apply(self._with_model(name, versions, labels))
        return ServedModel(name, tuple(sorted(versions)), labels)

    def _apply(self, config) -> None:
        self.models.reload_config(config)
        write_config(self.target.config_file, config)

    def _restore(self, config) -> None:
        try:
            self._apply(config)
        except Exception as exc:  # the original error matters more; this one is logged
            log.error("could not restore the previous serving config: %s", exc)
