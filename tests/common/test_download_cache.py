"""The download cache shared by the steps and kiln-model-server: filled once per URL and listing, bounded by size
and age, and never pruned of an entry that a live process holds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import download_cache
from common.download_cache import Bound


def listing(*names: str, etag: str = "v1") -> dict[str, dict]:
    return {name: {"size": 100, "ETag": etag} for name in names}


class Downloads:
    def __init__(self, size: int = 100):
        self.calls: list[str] = []
        self.size = size

    def __call__(self, relative: str, target: Path) -> None:
        self.calls.append(relative)
        target.write_bytes(b"x" * self.size)


@pytest.fixture(autouse=True)
def _let_go_of_everything():
    yield
    for entry in download_cache._holds.held():
        download_cache.release(entry)


def test_an_entry_is_downloaded_once_per_listing(tmp_path) -> None:
    download = Downloads()
    entry = download_cache.fetch("s3://b/m/1", listing("saved_model.pb", "variables/v.index"), download, tmp_path)
    assert sorted(download.calls) == ["saved_model.pb", "variables/v.index"]
    assert (entry / "variables" / "v.index").read_bytes() == b"x" * 100
    assert download_cache.fetch("s3://b/m/1", listing("saved_model.pb", "variables/v.index"), download,
                                tmp_path) == entry
    assert len(download.calls) == 2, "a hit downloads nothing"
    republished = download_cache.fetch("s3://b/m/1", listing("saved_model.pb", "variables/v.index", etag="v2"),
                                       download, tmp_path)
    assert republished != entry and len(download.calls) == 4, "another listing is another entry"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no scratch folder left"


def test_a_failed_download_leaves_no_entry(tmp_path) -> None:
    def failing(relative: str, target: Path) -> None:
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        download_cache.fetch("s3://b/x", listing("a", "b"), failing, tmp_path)
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []


def _fill(root: Path, count: int, age_step: float = 10) -> list[Path]:
    """`count` entries of 100 bytes, released, the first one least recently used."""
    entries = []
    for index in range(count):
        entry = download_cache.fetch(f"s3://b/{index}", listing("f"), Downloads(), root)
        download_cache.release(entry)
        used = time.time() - (count - index) * age_step
        os.utime(entry, (used, used))
        entries.append(entry)
    return entries


def test_pruning_removes_least_recently_used_entries_beyond_the_size_bound(tmp_path) -> None:
    entries = _fill(tmp_path, 5)
    removed = download_cache.prune(tmp_path, Bound(max_bytes=250, max_age_seconds=3600))
    assert removed == entries[:3], "oldest first, until 200 of 250 bytes are left"
    assert [e.exists() for e in entries] == [False, False, False, True, True]
    assert not Path(f"{entries[0]}{download_cache.LOCK_SUFFIX}").exists()


def test_pruning_removes_entries_unused_for_longer_than_the_age_bound(tmp_path) -> None:
    entries = _fill(tmp_path, 3, age_step=3600)  # used 3, 2 and 1 hours ago
    removed = download_cache.prune(tmp_path, Bound(max_bytes=10**9, max_age_seconds=1.5 * 3600))
    assert removed == entries[:2]


def test_an_entry_held_by_this_or_another_process_is_never_pruned(tmp_path) -> None:
    entries = _fill(tmp_path, 3)
    download_cache.fetch("s3://b/0", listing("f"), Downloads(), tmp_path)  # held again by this process
    # Another process holds entry 1, as a training worker reading its files would, until it exits.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, fcntl, os; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); sys.stdin.read()",
         f"{entries[1]}{download_cache.LOCK_SUFFIX}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        removed = download_cache.prune(tmp_path, Bound(max_bytes=0, max_age_seconds=0))
        assert removed == [entries[2]]
    finally:
        holder.communicate("")
    assert download_cache.prune(tmp_path, Bound(max_bytes=0, max_age_seconds=0)) == [entries[1]], \
        "released when its process exited"


def test_orphaned_scratch_folders_go_with_the_age_bound(tmp_path) -> None:
    orphan = tmp_path / ".0123abcd.killed"
    (orphan / "part").mkdir(parents=True)
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    fresh = tmp_path / ".4567.downloading"
    fresh.mkdir()
    download_cache.prune(tmp_path, Bound(max_bytes=10**9, max_age_seconds=3600))
    assert not orphan.exists() and fresh.exists()


def test_a_new_entry_prunes_the_cache_to_the_bound_from_the_environment(tmp_path, monkeypatch) -> None:
    entries = _fill(tmp_path, 3)
    monkeypatch.setenv("KILN_CACHE_MAX_BYTES", "250")
    newest = download_cache.fetch("s3://b/new", listing("f"), Downloads(), tmp_path)
    assert [e.exists() for e in entries] == [False, False, True] and newest.exists()


def test_the_cache_folder_comes_from_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "elsewhere"))
    entry = download_cache.fetch("s3://b/m", listing("f"), Downloads())
    assert entry.parent == tmp_path / "elsewhere"
