"""Artifacts: folders named by URI, each completed by a small JSON manifest.

Layout: `{artifact_root}/{pipeline}/{run_id}/{step}/{name}/` + `kiln-artifact.json` (kind, typed
properties, fingerprint of the files). Steps pass URIs to each other (XCom carries only these
strings). A step writes into a private staging folder and publishes it in one step, so a reader (or
a retried step) never sees half a result: on a local filesystem by `os.replace` of the folder; on
object storage (any fsspec URL) by uploading the files first and the manifest last — a folder
without a manifest is not an artifact.

Each kind is a subclass of `ArtifactType` in its own module under `tasks/artifacts/`: its name, its
folder layout, its typed properties (a pydantic model) and its readers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import fsspec
from pydantic import BaseModel, ConfigDict, ValidationError

from common import storage
from common.storage import is_local, local_path

__all__ = ["ArtifactError", "ArtifactType", "MANIFEST", "Manifest", "Output", "Properties", "is_local", "local_path"]

MANIFEST = "kiln-artifact.json"


class ArtifactError(RuntimeError):
    """An artifact URI that does not hold a complete artifact of the expected kind."""


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    uri: str
    properties: dict[str, Any] = {}
    fingerprint: str = ""


class Properties(BaseModel):
    """Base of every kind's typed properties: strict, so a typo in a step is caught at publish time."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=Properties)

KINDS: dict[str, type[ArtifactType[Any]]] = {}


def fingerprint_dir(folder: Path) -> str:
    """sha256 over relative paths and contents: equal folders give equal fingerprints."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest.update(str(file.relative_to(folder)).encode() + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class Output(Generic[P]):
    """An artifact being written: a private staging folder (`dir`) to fill and the properties to set. The step
    runner publishes it at `uri` when the step returns, or drops it when the step fails; a step that must leave
    an output behind before it fails (validate's anomalies) publishes it early with `publish()`."""

    def __init__(self, kind: type[ArtifactType[P]], uri: str):
        self.kind, self.uri = kind, uri
        self.properties: P | None = None
        self._folder = _make_staging_folder(uri)
        self.published = False

    @property
    def dir(self) -> Path:
        return self._folder

    def publish(self) -> None:
        """Make the artifact visible at `uri` whole (a retried step's publish replaces it whole); once."""
        if self.published:
            return
        if not isinstance(self.properties, self.kind.Properties):
            raise ArtifactError(f"{self.kind.KIND} at {self.uri}: the step set no {self.kind.Properties.__name__}")
        manifest = Manifest(kind=self.kind.KIND, uri=self.uri, properties=self.properties.model_dump(mode="json"),
                            fingerprint=fingerprint_dir(self._folder))
        _commit(self._folder, self.uri, manifest.model_dump_json(indent=2))
        self.published = True
        self.discard()

    def discard(self) -> None:
        """Remove the staging folder (what was published is not touched)."""
        shutil.rmtree(self._folder, ignore_errors=True)


class ArtifactType(Generic[P]):
    """One artifact kind. Subclasses set `KIND` and `Properties` and add readers for their layout."""

    KIND: ClassVar[str]
    Properties: ClassVar[type[Properties]]

    def __init__(self, uri: str, properties: P, fingerprint: str = ""):
        self.uri = uri
        self.properties = properties
        self.fingerprint = fingerprint

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        KINDS[cls.KIND] = cls

    def path(self, *parts: str) -> str:
        """A file inside the artifact (a local path, or a URL on object storage)."""
        return "/".join([self.uri.rstrip("/"), *parts])

    def local(self, *parts: str) -> Path:
        """A local path holding a file or folder of the artifact, for what reads only local files (TensorFlow,
        `mlflow.log_artifact`): the path itself when the artifact is local, else a cached download."""
        return storage.localize(self.path(*parts))

    @classmethod
    def read(cls, uri: str) -> Self:
        """The artifact at `uri`; fails in one line when it is missing or of another kind."""
        manifest = read_manifest(uri, cls.KIND)
        try:
            properties = cls.Properties.model_validate(manifest.properties)
        except ValidationError as exc:
            raise ArtifactError(f"{cls.KIND} at {uri} has unreadable properties: {exc.errors()[0]['msg']}") from None
        return cls(uri, properties, manifest.fingerprint)

    @classmethod
    @contextmanager
    def publish(cls, uri: str) -> Iterator[Output[P]]:
        """Yield an `Output`; on clean exit publish it at `uri` with the properties the block set. On an exception
        nothing at `uri` changes. (Steps get their outputs from the step runner; this is for everything else.)"""
        out: Output[P] = Output(cls, uri)
        try:
            yield out
            out.publish()
        finally:
            out.discard()


def read_text_proto(path: str, message: Any) -> Any:
    """A text-format proto file of an artifact (TFDV's statistics and anomalies are stored so)."""
    from google.protobuf import text_format

    with fsspec.open(path, "r") as fh:
        return text_format.Parse(fh.read(), message)


def read_manifest(uri: str, kind: str | None = None) -> Manifest:
    fs, path = fsspec.core.url_to_fs(uri)
    if not is_local(uri):
        fs.invalidate_cache(path)  # another process may have published (or removed) it since this one listed
    try:
        with fs.open(f"{path}/{MANIFEST}") as fh:
            manifest = Manifest.model_validate(json.load(fh))
    except FileNotFoundError:
        raise ArtifactError(f"no complete artifact at {uri} (manifest {MANIFEST} missing)") from None
    if kind is not None and manifest.kind != kind:
        raise ArtifactError(f"artifact at {uri} is a {manifest.kind}, expected a {kind}")
    return manifest


def _make_staging_folder(uri: str) -> Path:
    """Beside the target on a local file system (so the publish is a rename), else in the temp folder."""
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    return Path(tempfile.mkdtemp(prefix="kiln-artifact-"))


def _commit(staging: Path, uri: str, manifest: str) -> None:
    if is_local(uri):
        (staging / MANIFEST).write_text(manifest)
        _replace_dir(staging, local_path(uri))
        return
    # No rename on object storage: the manifest is what makes the folder an artifact. An older artifact's
    # manifest goes first (its other files after it), then the new files, then the new manifest: a reader
    # sees the old artifact whole, nothing, or the new one whole; a publish that dies midway leaves files
    # without a manifest, which readers ignore and the retry's publish removes.
    fs, path = fsspec.core.url_to_fs(uri)
    storage.remove(uri, first=[MANIFEST])
    storage.upload_dir(staging, uri)
    fs.pipe_file(f"{path}/{MANIFEST}", manifest.encode())
    fs.invalidate_cache(path)


def _replace_dir(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    # Two renames: the old artifact moves aside, the new one takes its name, then the old goes.
    trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, trash)
    os.replace(staging, target)
    shutil.rmtree(trash, ignore_errors=True)
