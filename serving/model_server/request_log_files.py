"""Request-log files: TFRecord files of PredictionLog records, one folder per model and version, rotated by size
and age, published whole.

Layout: `<filename_prefix>/<model>/<version>/<UTC time>-<host>-<pid>-<n>.tfrecord`, the time being when the file
was opened (`20261130T101500.123456Z`), `n` counting the files this process opened. A file is written under a
hidden in-progress name (`.<final name>.inprogress`) and renamed to its final name when it is closed (rotation,
a config that stops logging the model, server shutdown), so a reader that takes `*.tfrecord` never sees a record
being written. A process killed with -9 leaves its in-progress file behind, possibly ending in a half record: the
next writer for that folder on the same host cuts such a file after its last whole record and publishes it
(`recover_abandoned`), so no whole record is lost and no half record is ever published.

On object storage (`s3://...`, any fsspec URL) the file is written in a local spool folder and uploaded under its
final name when closed, one PUT, which is atomic there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import tensorflow as tf

log = logging.getLogger("kiln.model_server")

SUFFIX = ".tfrecord"
IN_PROGRESS = ".inprogress"
TFRECORD_FRAMING_BYTES = 16  # length (8) + masked crc of the length (4) + masked crc of the data (4)
HOST = socket.gethostname().replace("-", "_") or "host"


def is_remote(prefix: str) -> bool:
    return "://" in prefix and not prefix.startswith("file://")


def folder_name(model_name: str) -> str:
    """A model name as one path component: `/` and a leading `.` (`..`) cannot step out of the prefix."""
    name = quote(model_name, safe="-_.=+@,")
    return "%2E" + name[1:] if name.startswith(".") else name


@dataclass(frozen=True)
class FileLimits:
    max_bytes: int = 64 * 1024 * 1024
    max_seconds: float = 60.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class VersionLogFolder:
    """Where one model version's log files go: a local folder, or a spool folder uploaded to a URL."""

    def __init__(self, prefix: str, model_name: str, version: int):
        parts = (folder_name(model_name), str(version))
        self.remote = "/".join([prefix.rstrip("/"), *parts]) if is_remote(prefix) else None
        if self.remote is None:
            self.local = Path(prefix.removeprefix("file://")).joinpath(*parts)
        else:
            digest = hashlib.sha256(prefix.encode()).hexdigest()[:16]
            self.local = Path(tempfile.gettempdir(), "kiln-request-log-spool", digest, *parts)
        self.where = self.remote or str(self.local)

    def publish(self, in_progress: Path) -> None:
        """Give a closed in-progress file its final name (upload it, on object storage)."""
        final_name = in_progress.name.removeprefix(".").removesuffix(IN_PROGRESS)
        if self.remote is None:
            os.replace(in_progress, in_progress.with_name(final_name))
            return
        import fsspec

        fs, path = fsspec.core.url_to_fs(f"{self.remote}/{final_name}")
        fs.put_file(str(in_progress), path)
        in_progress.unlink()

    def recover_abandoned(self, open_here: set[Path]) -> int:
        """Publish the in-progress files dead processes of this host left, cut after their last whole record.
        Returns how many were published."""
        recovered = 0
        for path in sorted(self.local.glob(f".*{SUFFIX}{IN_PROGRESS}")):
            host, pid = _writer_of(path)
            if host != HOST or path in open_here or (pid != os.getpid() and _pid_alive(pid)):
                continue
            whole = whole_records_length(path)
            with open(path, "r+b") as handle:
                handle.truncate(whole)
            if whole == 0:
                path.unlink()
                continue
            self.publish(path)
            recovered += 1
            log.info("Request log: published %s, left by a process that ended (%d bytes of whole records)",
                     path.name.removeprefix(".").removesuffix(IN_PROGRESS), whole)
        return recovered


def _writer_of(path: Path) -> tuple[str, int]:
    # .<time>-<host>-<pid>-<n>.tfrecord.inprogress
    fields = path.name.removeprefix(".").split("-")
    try:
        return fields[1], int(fields[2])
    except (IndexError, ValueError):
        return "", -1


def whole_records_length(path: Path) -> int:
    """Bytes of `path` that are whole TFRecord records, checksums verified, from the start."""
    length = 0
    try:
        for record in tf.compat.v1.io.tf_record_iterator(str(path)):
            length += len(record) + TFRECORD_FRAMING_BYTES
    except tf.errors.OpError:  # a truncated or corrupt record: everything before it stays
        pass
    return length


class LogFile:
    """One open in-progress file of a version folder; `write` whole records, `close` publishes it."""

    def __init__(self, folder: VersionLogFolder, sequence: int):
        folder.local.mkdir(parents=True, exist_ok=True)
        opened = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        self.folder = folder
        self.path = folder.local / f".{opened}-{HOST}-{os.getpid()}-{sequence}{SUFFIX}{IN_PROGRESS}"
        self._writer = tf.io.TFRecordWriter(str(self.path))
        self.opened_at = time.monotonic()
        self.size = 0
        self.records = 0

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self.size += len(record) + TFRECORD_FRAMING_BYTES
        self.records += 1

    def flush(self) -> None:
        self._writer.flush()

    def is_due(self, limits: FileLimits) -> bool:
        return self.size >= limits.max_bytes or time.monotonic() - self.opened_at >= limits.max_seconds

    def close(self) -> None:
        self._writer.close()
        if self.records:
            self.folder.publish(self.path)
        else:
            self.path.unlink(missing_ok=True)
