"""Local copies of remote folders and files (object storage), shared by the steps (`common.storage.localize`)
and kiln-model-server (versions on an `s3://` base path): TensorFlow reads local files only.

An entry is keyed by the URL and its listing (names, sizes, ETags or mtimes), so a republished artifact or a
re-uploaded version is a new entry, and an entry is never changed once in place: it is filled in a private
folder and renamed, so two processes filling the same entry both end with a complete copy.

The cache is bounded. After each new entry, entries are removed least recently used first while the cache
holds more than `KILN_CACHE_MAX_BYTES` (default 10 GiB), and any entry unused for `KILN_CACHE_MAX_AGE_HOURS`
(default 168, a week). An entry in use is never removed: every process that uses one holds a shared lock on
it (`<entry>.lock`, flock) until it lets go of it or exits, and the pruner skips entries it cannot lock
exclusively. So the bound can be exceeded by what live processes use at once, never by what they used once.
The folder is `KILN_CACHE_DIR`, by default `<tmp>/kiln-cache`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What tells two versions of one remote file apart, by file system (S3: ETag; GCS: md5Hash/generation; local:
# mtime). Whichever the listing has is part of the key.
VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "updated")
DEFAULT_MAX_BYTES = 10 * 2**30
DEFAULT_MAX_AGE_HOURS = 168.0
LOCK_SUFFIX = ".lock"


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_CACHE_DIR") or Path(tempfile.gettempdir()) / "kiln-cache")


@dataclass(frozen=True)
class Bound:
    max_bytes: int
    max_age_seconds: float

    @classmethod
    def from_env(cls) -> Bound:
        return cls(int(os.environ.get("KILN_CACHE_MAX_BYTES") or DEFAULT_MAX_BYTES),
                   float(os.environ.get("KILN_CACHE_MAX_AGE_HOURS") or DEFAULT_MAX_AGE_HOURS) * 3600)


def entry_key(url: str, listing: dict[str, dict[str, Any]]) -> str:
    """The entry's name: a hash of the URL and, per file, its relative path, size and version."""
    described = sorted((name, info.get("size"), next((str(info[k]) for k in VERSION_KEYS if info.get(k)), ""))
                       for name, info in listing.items())
    return hashlib.sha256(json.dumps([url, described]).encode()).hexdigest()[:24]


class _Holds:
    """The shared locks this process holds on entries, by entry folder (one descriptor per entry)."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._mutex = threading.Lock()

    def hold(self, entry: Path) -> None:
        with self._mutex:
            if entry in self._fds:
                return
            fd = _lock(Path(f"{entry}{LOCK_SUFFIX}"), fcntl.LOCK_SH)
            assert fd is not None, "a blocking flock returns only once it holds the lock"
            self._fds[entry] = fd

    def release(self, entry: Path) -> None:
        with self._mutex:
            fd = self._fds.pop(entry, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops its lock

    def held(self) -> set[Path]:
        with self._mutex:
            return set(self._fds)


_holds = _Holds()


def _lock(lock_file: Path, mode: int) -> int | None:
    """A descriptor holding a `mode` flock on `lock_file` as it is now on disk (None: LOCK_NB and taken).
    Another process may unlink the file we opened while we waited, and a lock on a deleted file guards nothing."""
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(lock_file).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def fetch(url: str, listing: dict[str, dict[str, Any]], download: Callable[[str, Path], None],
          root: Path | None = None) -> Path:
    """The entry folder holding the files of `listing` (relative path in the entry -> its info) of `url`,
    each downloaded by `download(relative path, local target)` unless cached. The entry is held (`release`)."""
    root = root or cache_dir()
    entry = root / entry_key(url, listing)
    root.mkdir(parents=True, exist_ok=True)
    _holds.hold(entry)  # before it is looked at: the pruner cannot take it from under us now
    if entry.is_dir():
        os.utime(entry)  # last use, for the pruner
        return entry
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
    try:
        for relative in listing:
            target = scratch / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            download(relative, target)
        try:
            os.replace(scratch, entry)
        except OSError:  # another process filled the same entry meanwhile: the same content
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("cached %s in %s", url, entry)
    prune(root, Bound.from_env())
    return entry


def release(entry: Path) -> None:
    """This process no longer uses `entry`: the pruner may remove it (once it is old or the cache is full)."""
    _holds.release(entry)


def prune(root: Path, bound: Bound, now: float | None = None) -> list[Path]:
    """Remove entries unused for longer than the bound's age, then the least recently used ones while the cache
    is larger than its size bound; entries some process holds are kept. Returns the removed entries."""
    now = time.time() if now is None else now
    _remove_orphans(root, older_than=now - bound.max_age_seconds)
    entries = sorted(_entries(root), key=lambda e: e.last_used)
    total = sum(e.size for e in entries)
    removed = []
    for entry in entries:
        too_old = now - entry.last_used > bound.max_age_seconds
        if not (too_old or total > bound.max_bytes) or not _remove_unless_held(entry.path):
            continue
        total -= entry.size
        removed.append(entry.path)
    if removed:
        log.info("pruned %d cache entries from %s (%d bytes left)", len(removed), root, total)
    return removed


@dataclass(frozen=True)
class _Entry:
    path: Path
    last_used: float
    size: int


def _entries(root: Path) -> Iterable[_Entry]:
    try:
        children = list(os.scandir(root))
    except FileNotFoundError:
        return
    for child in children:
        if child.name.startswith(".") or child.name.endswith(LOCK_SUFFIX) or not child.is_dir():
            continue
        try:
            yield _Entry(Path(child.path), child.stat().st_mtime, _tree_size(Path(child.path)))
        except FileNotFoundError:  # removed by another process meanwhile
            continue


def _remove_orphans(root: Path, older_than: float) -> None:
    """Scratch folders of downloads whose process died, and folders a pruner renamed but did not finish."""
    try:
        children = list(os.scandir(root))
    except FileNotFoundError:
        return
    for child in children:
        try:
            if child.name.startswith(".") and child.is_dir() and child.stat().st_mtime < older_than:
                shutil.rmtree(child.path, ignore_errors=True)
        except FileNotFoundError:
            continue


def _tree_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _remove_unless_held(entry: Path) -> bool:
    if entry in _holds.held():
        return False
    fd = _lock(Path(f"{entry}{LOCK_SUFFIX}"), fcntl.LOCK_EX | fcntl.LOCK_NB)
    if fd is None:
        return False  # another process uses it
    try:
        # Renamed away first, so a process that looks it up next downloads afresh instead of reading a folder
        # being deleted; the lock file goes last, while we still hold it.
        doomed = entry.with_name(f".pruned-{entry.name}-{os.getpid()}")
        try:
            os.replace(entry, doomed)
        except FileNotFoundError:
            return False
        shutil.rmtree(doomed, ignore_errors=True)
        os.unlink(f"{entry}{LOCK_SUFFIX}")
        return True
    finally:
        os.close(fd)
