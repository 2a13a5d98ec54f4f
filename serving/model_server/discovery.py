"""Which version folders of a model exist, are settled and are aspired: TF Serving's FileSystemStoragePathSource
with its servable_version_policy (ModelVersionPolicy latest / all / specific).

Half-written version folders are never reported (see `VersionDiscovery`).
"""

from __future__ import annotations

import logging
import os
import re
import time

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

    def __init__(self, prefer_tflite: bool):
        self._prefer_tflite = prefer_tflite
        self._seen: dict[str, tuple[tuple, float]] = {}

    def scan(self, base_path: str) -> tuple[dict[int, str] | None, bool]:
        """Return ({version: folder} or None if base_path is missing, whether some folder is still settling)."""
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
