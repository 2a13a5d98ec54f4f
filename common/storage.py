"""Local paths and fsspec URLs (`s3://`, `gs://`, `file://`, ...) alike, for everything that is not an artifact's
own publish (`tasks.artifacts.base`).

TensorFlow reads and writes `s3://` only with the tensorflow-io plugin, which kiln does not depend on, so the
rule is: TensorFlow always works on local files. Remote files are downloaded to a local cache first
(`localize`), and what TensorFlow wrote locally is uploaded afterwards (`upload_dir`, with the files that mark a
folder complete uploaded last). A local path or `file://` URL is used in place: no copy.

The cache is `common.download_cache`: keyed by the URL and its listing (names, sizes, ETags or mtimes), so a
republished artifact or a replaced file is downloaded again; bounded in size and age.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import fsspec

from common import download_cache


def is_local(uri: str | os.PathLike[str]) -> bool:
    uri = str(uri)
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str | os.PathLike[str]) -> Path:
    return Path(str(uri).removeprefix("file://"))


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """`uri/part/...`: a local path or a URL, as given."""
    return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])


def url_to_fs(uri: str | os.PathLike[str]) -> tuple[Any, str]:
    return fsspec.core.url_to_fs(str(uri))


def exists(uri: str | os.PathLike[str]) -> bool:
    if is_local(uri):
        return local_path(uri).exists()
    fs, path = url_to_fs(uri)
    fs.invalidate_cache(path)
    return fs.exists(path)


def read_text(uri: str | os.PathLike[str]) -> str:
    if is_local(uri):
        return local_path(uri).read_text()
    fs, path = url_to_fs(uri)
    return fs.cat_file(path).decode()


def write_text(uri: str | os.PathLike[str], text: str) -> None:
    """Replace a file whole: a rename locally, one PUT on object storage (a reader sees the old or the new)."""
    if is_local(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    fs, path = url_to_fs(uri)
    fs.pipe_file(path, text.encode())


def remove(uri: str | os.PathLike[str], first: Sequence[str] = ()) -> None:
    """Delete a folder (missing: nothing to do). `first`: files inside it deleted before the rest, so a folder
    that is complete only with them (a version's `saved_model.pb`) stops counting as complete at once."""
    if is_local(uri):
        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    fs, path = url_to_fs(uri)
    fs.invalidate_cache(path)
    for name in first:
        if fs.exists(f"{path}/{name}"):
            fs.rm_file(f"{path}/{name}")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def remove_file(uri: str | os.PathLike[str]) -> None:
    """Delete one file (missing: nothing to do)."""
    if is_local(uri):
        local_path(uri).unlink(missing_ok=True)
        return
    fs, path = url_to_fs(uri)
    if fs.exists(path):
        fs.rm_file(path)


def listing(uri: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """{relative path: info} of every file under a folder URL ({"": info} for a file); fresh, not cached."""
    fs, path = url_to_fs(uri)
    path = path.rstrip("/")
    fs.invalidate_cache(path)
    found = fs.find(path, detail=True)
    if not found:
        raise FileNotFoundError(str(uri))
    if list(found) == [path] and found[path].get("type") == "file":
        return {"": found[path]}
    return {name[len(path) + 1:]: info for name, info in found.items() if name.startswith(path + "/")}


def localize(uri: str | os.PathLike[str]) -> Path:
    """A local path holding the file or folder at `uri`: the path itself when local, else a cached download
    (held by this process until it exits, so the cache's pruning never removes it from under its reader)."""
    if is_local(uri):
        return local_path(uri)
    uri = str(uri).rstrip("/")
    files = listing(uri)
    name = uri.rsplit("/", 1)[-1] or "root"
    fs, path = url_to_fs(uri)
    path = path.rstrip("/")
    in_entry = {f"{name}/{relative}" if relative else name: info for relative, info in files.items()}

    def download(relative_in_entry: str, target: Path) -> None:
        relative = relative_in_entry[len(name) + 1:]
        fs.get_file(f"{path}/{relative}" if relative else path, str(target))

    return download_cache.fetch(uri, in_entry, download) / name


def local_files(files: Iterable[str]) -> list[str]:
    """Local paths for files given as paths or URLs (what `tf.data` needs without tensorflow-io)."""
    return [str(localize(f)) if not is_local(f) else str(local_path(f)) for f in files]


def upload_dir(folder: Path, uri: str, last: Sequence[str] = ()) -> None:
    """Put a local folder's files at the folder URL `uri`; the files named in `last` (relative paths) go after
    all others, in that order, so a reader that waits for them never sees the folder half uploaded."""
    fs, path = url_to_fs(uri)
    path = path.rstrip("/")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    ordered = [f for f in files if f not in last] + [f for f in last if f in files]
    for relative in ordered:
        fs.put_file(str(folder / relative), f"{path}/{relative}")
    fs.invalidate_cache(path)


def download_dir(uri: str, folder: Path) -> bool:
    """Copy the files under the folder URL `uri` into `folder` (created; files there are overwritten, others
    kept); False when there is nothing at `uri`. Unlike `localize`, no cache: for state that changes every
    epoch (training backups) or that is copied once into a staging folder."""
    try:
        files = listing(uri)
    except FileNotFoundError:
        return False
    fs, path = url_to_fs(uri)
    for relative in files:
        target = folder / relative if relative else folder
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{path.rstrip('/')}/{relative}" if relative else path, str(target))
    return True


def mirror_dir(folder: Path, uri: str, last: Sequence[str] = ()) -> None:
    """Make the folder URL `uri` hold what `folder` holds: upload every file (`last` after the others), then
    delete the remote files the folder no longer has. A reader that follows `last` (a checkpoint's index
    file) finds what it names at every moment: new files arrive before it, old ones go after it."""
    upload_dir(folder, uri, last)
    keep = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    fs, path = url_to_fs(uri)
    try:
        remote = listing(uri)
    except FileNotFoundError:  # an empty folder mirrored to nothing
        return
    for relative in remote:
        if relative and relative not in keep:
            fs.rm_file(f"{path.rstrip('/')}/{relative}")
    fs.invalidate_cache(path.rstrip("/"))
