"""Digests of code and files that decide what a step makes: the step cache's keys and the tuning study's name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from common import storage
from common.digest import file_sha256


def model_code_digest(ref: str) -> str:
    """The digest of the code `train.model` names: a file's bytes, a module's source (a built-in's module)."""
    from tasks.models.contract import BUILTINS, is_file_reference

    target = BUILTINS.get(ref, ref)
    location = target.rpartition(":")[0]
    return uri_digest(location) if is_file_reference(target) else module_digest(location)


def uri_digest(uri: str) -> str:
    """A file's sha256 when local, its ETag or version (fsspec's `ukey`) on object storage."""
    if storage.is_local(uri):
        return file_sha256(storage.local_path(uri))
    fs, path = storage.url_to_fs(uri)
    return str(fs.ukey(path))


def module_digest(module: str) -> str:
    found = importlib.util.find_spec(module)
    if found is None or not found.origin or not Path(found.origin).is_file():
        return module  # a namespace or built-in module: its name is all there is
    return file_sha256(Path(found.origin))
