"""The content digest of a model version folder: one sha256 that names exactly the bytes a server loads.

sha256 over the folder's files in sorted relative-path order (POSIX separators), each contributing its relative
path, a NUL byte, its own sha256 as hex, then a newline. Empty folders do not count; file names and contents do,
so a renamed, added, removed or changed file gives another digest. Evaluate records it for the artifact it
scored, register tags the MLflow version with it, push refuses a folder with another one, and verify recomputes
it from the folder the server loads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file under `folder`, sorted by the relative path."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for relative, path in folder_files(folder):
        digest.update(relative.encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return digest.hexdigest()


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for _, path in folder_files(folder))
