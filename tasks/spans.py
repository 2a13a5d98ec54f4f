"""Data that arrives in spans (TFX's word): `data.source: data/churn/span-{SPAN}.csv` names files
span-1.csv, span-2.csv, ...; a run reads the newest (or the one `data.span` pins) and records which,
and `kiln data add` writes the next one. The folder may be any fsspec URL (`s3://bucket/churn/span-{SPAN}.parquet`)."""

from __future__ import annotations

import re

import fsspec

from tasks.errors import BadInputError

SPAN = "{SPAN}"


class SpanError(BadInputError):
    """No span where data.source says, or a span that does not exist; one line."""


def is_spanned(source: str) -> bool:
    return SPAN in source


def _split(source: str) -> tuple[str, str]:
    folder, _, name = source.rpartition("/")
    return folder or ".", name


def _pattern(source: str) -> re.Pattern[str]:
    before, _, after = _split(source)[1].partition(SPAN)
    return re.compile(re.escape(before) + r"(\d+)" + re.escape(after) + r"\Z")


def span_files(source: str) -> dict[int, str]:
    """span number -> file (a path or URL, as the template is written), for the files of the template that exist."""
    if not is_spanned(source):
        raise SpanError(f"data.source {source!r} has no {SPAN}")
    folder, name = _split(source)
    if SPAN in folder:
        raise SpanError(f"data.source {source!r}: {SPAN} may only appear in the file name")
    pattern = _pattern(source)
    fs, root = fsspec.core.url_to_fs(folder)
    found = {}
    if fs.isdir(root):
        fs.invalidate_cache(root)  # object storage listings are cached; a span may have just been added
        for entry in fs.ls(root, detail=True):
            base = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            match = pattern.match(base)
            if match and entry["type"] == "file":
                found[int(match.group(1))] = f"{folder}/{base}"
    return found


def span_file(source: str, span: int | None = None) -> tuple[str, int]:
    """(the file, its span): the one `span` names, else the newest."""
    files = span_files(source)
    if not files:
        raise SpanError(f"no span of data.source {source} exists yet; add one with `kiln data add FILE --pipeline NAME`")
    if span is None:
        span = max(files)
    elif span not in files:
        raise SpanError(f"data.span {span}: no such file for {source} (spans: {', '.join(map(str, sorted(files)))})")
    return files[span], span


def next_span(source: str) -> tuple[str, int]:
    """Where the next span goes (a path or URL), and its number (1 for the first)."""
    files = span_files(source)
    number = max(files, default=0) + 1
    return source.replace(SPAN, str(number)), number
