"""Which version folders of a model exist, are settled and are aspired: TF Serving's FileSystemStoragePathSource
with its servable_version_policy (ModelVersionPolicy latest / all / specific).

Half-written version folders are never loaded (see `VersionDiscovery`), but, as in TF Serving, which aspires
every numeric folder, a loaded version stays while its folder is there, complete or not (`Scan.present`): a
version being uploaded again, or being removed file by file, is not unloaded midway. A base path may be an fsspec URL
(`s3://bucket/models/<model>`, as TF Serving reads S3 with its own file system): version folders are then
listed there and each settled one is downloaded to a local cache, from which it is loaded (`RemoteVersions`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorflow_serving.config import model_server_config_pb2

from common import download_cache
from serving.model_server.servable import has_model_file

log = logging.getLogger("kiln.model_server")

VERSION_DIR = re.compile(r"[0-9]+")
INT64_MAX = 2**63 - 1
SETTLE_SECONDS = 0.25


@dataclass(frozen=True)
class Scan:
    """What one look at a base path found."""

    found: dict[int, str] | None  # loadable versions -> local folder; None: the base path is missing
    settling: bool = False  # some folder is still changing: look again soon
    present: frozenset[int] = frozenset()  # every numeric version folder there, loadable or not


class VersionDiscovery:
    """Finds loadable version folders under a base path.

    Guard against half-written versions: a child folder counts only if (1) its name is all digits, so staging
    folders such as `.tmp-124` or `124.partial` are ignored until renamed; (2) it holds `saved_model.pb`
    (or `model.tflite` with --prefer_tflite_model), which TensorFlow writes after the variables; and (3) its
    contents (file names, sizes, mtimes) are settled: either unchanged since the previous scan at least
    SETTLE_SECONDS earlier, or last modified more than SETTLE_SECONDS ago.
    """

    def __init__(self, prefer_tflite: bool, cache_dir: str | None = None):
        self._prefer_tflite = prefer_tflite
        self._seen: dict[str, tuple[tuple, float]] = {}
        self._remote = RemoteVersions(prefer_tflite, cache_dir)

    def scan(self, base_path: str) -> Scan:
        if "://" in base_path and not base_path.startswith("file://"):
            return self._remote.scan(base_path)
        base_path = base_path.removeprefix("file://")
        try:
            names = os.listdir(base_path)
        except OSError:
            return Scan(None)
        found: dict[int, str] = {}
        present: set[int] = set()
        unsettled = False
        for name in sorted(names):
            path = os.path.join(base_path, name)
            if not VERSION_DIR.fullmatch(name) or int(name) > INT64_MAX or not os.path.isdir(path):
                continue
            present.add(int(name))
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
        return Scan(found, unsettled, frozenset(present))

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


class RemoteVersions:
    """Version folders under an fsspec URL, served from local copies.

    The same guards as on a local disk: a numeric name, the model file (`saved_model.pb`, or `model.tflite`
    with --prefer_tflite_model; kiln's deployer uploads them last) and a listing (names, sizes, ETags)
    unchanged across two scans at least SETTLE_SECONDS apart. A settled version is downloaded once into the
    download cache (`common.download_cache`: an entry per URL and listing, filled privately and renamed into
    place), so a re-uploaded version is a new copy and a half-downloaded one is never loaded. The server holds
    the entries of the versions it finds; once a version is gone from the base path its entry is let go, and
    the cache's bound (size and age) removes it in time.
    """

    def __init__(self, prefer_tflite: bool, cache_dir: str | None = None):
        self._prefer_tflite = prefer_tflite
        self._cache = Path(cache_dir) if cache_dir else None
        self._seen: dict[str, tuple[str, float]] = {}
        self._held: dict[str, Path] = {}  # version URL -> the cache entry it is served from

    def scan(self, base_path: str) -> Scan:
        import fsspec

        fs, root = fsspec.core.url_to_fs(base_path)
        root = root.rstrip("/")
        fs.invalidate_cache(root)
        try:
            files = fs.find(root, detail=True)
        except OSError as exc:
            log.error("Listing %s failed: %s", base_path, exc)
            return Scan(None)
        if not files and not fs.exists(root):
            return Scan(None)
        by_version: dict[str, dict[str, Any]] = {}
        for name, info in files.items():
            relative = name[len(root) + 1:] if name.startswith(root + "/") else ""
            version, _, inside = relative.partition("/")
            if inside and VERSION_DIR.fullmatch(version) and int(version) <= INT64_MAX:
                by_version.setdefault(version, {})[inside] = info
        found: dict[int, str] = {}
        unsettled = False
        now = time.time()
        for version, listing in sorted(by_version.items()):
            names = ("saved_model.pb", "saved_model.pbtxt") + (("model.tflite",) if self._prefer_tflite else ())
            if not any(n in listing for n in names):
                continue
            url = f"{base_path.rstrip('/')}/{version}"
            digest = download_cache.entry_key(url, listing)
            previous = self._seen.get(url)
            if previous is None or previous[0] != digest:
                self._seen[url] = (digest, now)
                unsettled = True
                continue
            if now - previous[1] < SETTLE_SECONDS:
                unsettled = True
                continue
            try:
                found[int(version)] = str(self._download(fs, f"{root}/{version}", url, listing))
            except OSError as exc:
                log.error("Downloading %s failed: %s", url, exc)
                unsettled = True
        prefix = base_path.rstrip("/") + "/"
        for gone in [u for u in self._seen if u.startswith(prefix) and u.rsplit("/", 1)[-1] not in by_version]:
            del self._seen[gone]
        for gone in [u for u in self._held if u.startswith(prefix) and u.rsplit("/", 1)[-1] not in by_version]:
            download_cache.release(self._held.pop(gone))
        return Scan(found, unsettled, frozenset(int(v) for v in by_version))

    def _download(self, fs: Any, remote: str, url: str, listing: dict[str, Any]) -> Path:
        entry = download_cache.fetch(url, listing, lambda inside, target: fs.get_file(f"{remote}/{inside}",
                                                                                      str(target)), self._cache)
        previous = self._held.get(url)
        if previous is not None and previous != entry:  # the version was re-uploaded: the old copy is let go
            download_cache.release(previous)
        self._held[url] = entry
        return entry


def aspired_versions(policy: model_server_config_pb2.ModelConfig, found: dict[int, str],
                     warn: bool = True) -> dict[int, str]:
    """The found versions the model's ModelVersionPolicy aspires: the latest N (1 by default), all, or the
    specific ones (warning about those not on disk, unless `warn` is off)."""
    version_policy = policy.model_version_policy
    kind = version_policy.WhichOneof("policy_choice")
    if kind == "all":
        return dict(found)
    if kind == "specific":
        wanted = set(version_policy.specific.versions)
        missing = wanted - set(found)
        if missing and warn:
            log.warning(
                "Version(s) %s of servable %s not found under %s",
                sorted(missing),
                policy.name,
                policy.base_path,
            )
        return {v: p for v, p in found.items() if v in wanted}
    keep = max(version_policy.latest.num_versions, 1) if kind == "latest" else 1
    return {v: found[v] for v in sorted(found, reverse=True)[:keep]}
