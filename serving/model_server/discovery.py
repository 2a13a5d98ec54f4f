"""Which version folders of a model exist, are settled and are aspired: TF Serving's FileSystemStoragePathSource
with its servable_version_policy (ModelVersionPolicy latest / all / specific).

Half-written version folders are never reported (see `VersionDiscovery`). A base path may be an fsspec URL
(`s3://bucket/models/<model>`, as TF Serving reads S3 with its own file system): version folders are then
listed there and each settled one is downloaded to a local cache, from which it is loaded (`RemoteVersions`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from typing import Any

from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.servable import has_model_file

log = logging.getLogger("kiln.model_server")

VERSION_DIR = re.compile(r"[0-9]+")
INT64_MAX = 2**63 - 1
SETTLE_SECONDS = 0.25


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

    def scan(self, base_path: str) -> tuple[dict[int, str] | None, bool]:
        """Return ({version: folder} or None if base_path is missing, whether some folder is still settling)."""
        if "://" in base_path and not base_path.startswith("file://"):
            return self._remote.scan(base_path)
        base_path = base_path.removeprefix("file://")
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


_VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "updated")


class RemoteVersions:
    """Version folders under an fsspec URL, served from local copies.

    The same guards as on a local disk: a numeric name, the model file (`saved_model.pb`, or `model.tflite`
    with --prefer_tflite_model; kiln's deployer uploads them last) and a listing (names, sizes, ETags)
    unchanged across two scans at least SETTLE_SECONDS apart. A settled version is downloaded once into
    `<cache>/<hash of the URL>-<hash of the listing>/` (a private folder renamed into place), so a re-uploaded
    version is a new copy and a half-downloaded one is never loaded. Copies of versions that are gone stay in
    the cache until the server's temp folder is cleaned.
    """

    def __init__(self, prefer_tflite: bool, cache_dir: str | None = None):
        self._prefer_tflite = prefer_tflite
        self._cache = cache_dir or os.path.join(tempfile.gettempdir(), "kiln-model-server-cache")
        self._seen: dict[str, tuple[str, float]] = {}

    def scan(self, base_path: str) -> tuple[dict[int, str] | None, bool]:
        import fsspec

        fs, root = fsspec.core.url_to_fs(base_path)
        root = root.rstrip("/")
        fs.invalidate_cache(root)
        try:
            files = fs.find(root, detail=True)
        except OSError as exc:
            log.error("Listing %s failed: %s", base_path, exc)
            return None, False
        if not files and not fs.exists(root):
            return None, False
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
            described = sorted((n, i.get("size"), next((str(i[k]) for k in _VERSION_KEYS if i.get(k)), ""))
                               for n, i in listing.items())
            digest = hashlib.sha256(json.dumps([url, described]).encode()).hexdigest()[:24]
            previous = self._seen.get(url)
            if previous is None or previous[0] != digest:
                self._seen[url] = (digest, now)
                unsettled = True
                continue
            if now - previous[1] < SETTLE_SECONDS:
                unsettled = True
                continue
            try:
                found[int(version)] = self._download(fs, f"{root}/{version}", listing, digest)
            except OSError as exc:
                log.error("Downloading %s failed: %s", url, exc)
                unsettled = True
        for gone in [u for u in self._seen if u.startswith(base_path.rstrip("/") + "/")
                     and u.rsplit("/", 1)[-1] not in by_version]:
            del self._seen[gone]
        return found, unsettled

    def _download(self, fs: Any, remote: str, listing: dict[str, Any], digest: str) -> str:
        target = os.path.join(self._cache, digest)
        if os.path.isdir(target):
            return target
        os.makedirs(self._cache, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=f".{digest}.", dir=self._cache)
        try:
            for inside in listing:
                local = os.path.join(scratch, *inside.split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                fs.get_file(f"{remote}/{inside}", local)
            try:
                os.replace(scratch, target)
            except OSError:  # another process of the group downloaded it meanwhile
                if not os.path.isdir(target):
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("Downloaded %s to %s", remote, target)
        return target


def aspired_versions(policy: model_server_config_pb2.ModelConfig, found: dict[int, str]) -> dict[int, str]:
    """The found versions the model's ModelVersionPolicy aspires: the latest N (1 by default), all, or the
    specific ones (warning about those not on disk)."""
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
