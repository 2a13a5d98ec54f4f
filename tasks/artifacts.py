"""Artifacts: folders named by URI, each completed by a small JSON manifest.

Layout: `{artifact_root}/{pipeline}/{run_id}/{step}/{name}/` + `kiln-artifact.json`. Steps pass
URIs to each other (XCom carries only these strings). A step writes into a private staging folder
and publishes it in one step, so a reader (or a retried step) never sees half a result: on a local
filesystem by `os.replace` of the folder; on object storage (any fsspec URL) by uploading the
files first and the manifest last — a folder without a manifest is not an artifact.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel, ConfigDict

MANIFEST = "kiln-artifact.json"


class ArtifactError(RuntimeError):
    """An artifact URI that does not hold a complete artifact of the expected kind."""


class Artifact(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    uri: str
    properties: dict[str, Any] = {}
    fingerprint: str = ""

    def path(self, *parts: str) -> str:
        """A file inside the artifact (a local path, or a URL on object storage)."""
        return "/".join([self.uri.rstrip("/"), *parts])


@dataclass(frozen=True)
class StepContext:
    """Where one DAG run's artifacts live, and which run/try this is (for MLflow tags)."""

    artifact_root: str
    pipeline: str
    run_id: str
    try_number: int = 1

    def output_uri(self, step: str, name: str) -> str:
        safe_run = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in self.run_id)
        return "/".join([self.artifact_root.rstrip("/"), self.pipeline, safe_run, step, name])


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def fingerprint_dir(folder: Path) -> str:
    """sha256 over relative paths and contents: equal folders give equal fingerprints."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest.update(str(file.relative_to(folder)).encode() + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@contextmanager
def publish_artifact(uri: str, kind: str, properties: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a local staging folder; on clean exit publish it at `uri` with its manifest.

    The caller may add to `properties` (the same dict) inside the block. On an exception the
    staging folder is removed and nothing at `uri` changes. Publishing over an existing artifact
    (a retried step) replaces it whole.
    """
    props = properties if properties is not None else {}
    if _is_local(uri):
        target = _local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    else:
        staging = Path(tempfile.mkdtemp(prefix="kiln-artifact-"))
    try:
        yield staging
        artifact = Artifact(kind=kind, uri=uri, properties=props, fingerprint=fingerprint_dir(staging))
        manifest = artifact.model_dump_json(indent=2)
        if _is_local(uri):
            (staging / MANIFEST).write_text(manifest)
            _replace_dir(staging, target)
        else:
            fs, path = fsspec.core.url_to_fs(uri)
            if fs.exists(path):
                fs.rm(path, recursive=True)
            fs.put(str(staging) + "/", path, recursive=True)
            with fs.open(f"{path}/{MANIFEST}", "w") as fh:
                fh.write(manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_dir(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    # Two renames: the old artifact moves aside, the new one takes its name, then the old goes.
    trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, trash)
    os.replace(staging, target)
    shutil.rmtree(trash, ignore_errors=True)


def read_artifact(uri: str, kind: str | None = None) -> Artifact:
    """The manifest at `uri`; fails in one line when it is missing or of another kind."""
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        with fs.open(f"{path}/{MANIFEST}") as fh:
            artifact = Artifact.model_validate(json.load(fh))
    except FileNotFoundError:
        raise ArtifactError(f"no complete artifact at {uri} (manifest {MANIFEST} missing)") from None
    if kind is not None and artifact.kind != kind:
        raise ArtifactError(f"artifact at {uri} is a {artifact.kind}, expected a {kind}")
    return artifact
