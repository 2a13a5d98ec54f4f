"""Data that arrives in spans (TFX's word): `data.source: data/churn/span-{SPAN}.csv` names files
span-1.csv, span-2.csv, ...; a run reads the newest (or the one `data.span` pins) and records which,
and `kiln data add` writes the next one."""

from __future__ import annotations

import re
from pathlib import Path

from tasks.errors import BadInputError

SPAN = "{SPAN}"


class SpanError(BadInputError):
    """No span where data.source says, or a span that does not exist; one line."""


def is_spanned(source: str) -> bool:
    return SPAN in source


def _pattern(source: str) -> re.Pattern[str]:
    name = Path(source).name
    before, _, after = name.partition(SPAN)
    return re.compile(re.escape(before) + r"(\d+)" + re.escape(after) + r"\Z")


def span_files(source: str) -> dict[int, Path]:
    """span number -> file, for the files of the template that exist."""
    if not is_spanned(source):
        raise SpanError(f"data.source {source!r} has no {SPAN}")
    if SPAN in str(Path(source).parent):
        raise SpanError(f"data.source {source!r}: {SPAN} may only appear in the file name")
    folder, pattern = Path(source).parent, _pattern(source)
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match and path.is_file():
                found[int(match.group(1))] = path
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
    return str(files[span]), span


def next_span(source: str) -> tuple[Path, int]:
    """Where the next span goes, and its number (1 for the first)."""
    files = span_files(source)
    number = max(files, default=0) + 1
    return Path(source).parent / Path(source).name.replace(SPAN, str(number)), number
