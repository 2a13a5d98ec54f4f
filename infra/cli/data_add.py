"""`kiln data add FILE --pipeline NAME`: a new span of a pipeline's data, checked against the pipeline's
schema before anything is copied, written in atomically as the next span, then announced to Airflow
as an event on the pipeline's data asset (which starts an on_new_data retrain and the drift monitor).

The schema a new span must fit: the curated one (`data.schema_path`), else the newest span's columns
and types (the first span is taken as it is, once it parses as a CSV).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from common import storage
from tasks.columns import holds, preview
from tasks.config import PipelineConfig
from tasks.data.profile import profile_source
from tasks.errors import BadInputError
from tasks.schema import feature_map, load_schema, value_type
from tasks.spans import SPAN, is_spanned, next_span, span_files


class SpanRejected(BadInputError):
    """The file does not fit the pipeline's data; one line naming the file and the column."""


@dataclass(frozen=True)
class AddedSpan:
    path: str  # a local path or a URL
    span: int
    rows: int


def expected_columns(config: PipelineConfig) -> tuple[dict[str, str | None], str]:
    """(column -> value type, where that came from) that a new span must have."""
    if config.data.schema_path:
        features = feature_map(load_schema(config.data.schema_path))
        return {name: value_type(feature) for name, feature in features.items()}, f"schema {config.data.schema_path}"
    spans = span_files(config.data.source)
    if not spans:
        return {}, "no schema and no span yet"
    newest = max(spans)
    profile = profile_source(str(spans[newest]))
    return {name: column.type for name, column in profile.columns.items()}, f"span {newest} ({spans[newest]})"


def check_span(config: PipelineConfig, file: Path) -> int:
    """Refuse a file that does not fit; return its row count."""
    profile = profile_source(str(file))  # a missing, empty, unreadable or ragged file: one DataError line
    if config.data.label_column not in profile.columns:
        raise SpanRejected(f"{file}: label column {config.data.label_column!r} is not in the header "
                           f"({preview(profile.header)})")
    expected, origin = expected_columns(config)
    if not expected:
        return profile.rows
    missing = [name for name in expected if name not in profile.columns]
    if missing:
        raise SpanRejected(f"{file}: missing {preview(missing)} (required by {origin})")
    unexpected = [name for name in profile.header if name not in expected]
    if unexpected:
        raise SpanRejected(f"{file}: unexpected {preview(unexpected)} (not in {origin})")
    for name, wanted in expected.items():
        seen = profile.columns[name].type
        if wanted is not None and seen is not None and not holds(wanted, seen):
            raise SpanRejected(f"{file}: column {name!r} holds {seen} values, {origin} says {wanted}")
    return profile.rows


def add_span(config: PipelineConfig, file: Path) -> AddedSpan:
    """Check the file, then copy it in as the next span: to a hidden temporary name first, then linked
    to its final name, which fails rather than overwrite a span another writer just added."""
    if not is_spanned(config.data.source):
        raise SpanRejected(f"pipeline {config.pipeline}: data.source {config.data.source} has no {SPAN}; new data "
                           f"comes in spans, e.g. data.source: data/{config.pipeline}/span-{SPAN}.csv")
    rows = check_span(config, file)
    where, span = next_span(config.data.source)
    if not storage.is_local(where):
        return _upload_span(config, file, where, span, rows)
    target = storage.local_path(where)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(file, staging)
        os.link(staging, target)
    except FileExistsError:
        raise SpanRejected(f"span {span} of {config.pipeline} was added by someone else meanwhile; add again") from None
    finally:
        staging.unlink(missing_ok=True)
    return AddedSpan(path=str(target), span=span, rows=rows)


def _upload_span(config: PipelineConfig, file: Path, where: str, span: int, rows: int) -> AddedSpan:
    """Object storage: one PUT, which readers see whole or not at all. It has no create-if-absent, so two writers
    racing for one span number are told apart only by the check just before the upload."""
    fs, path = storage.url_to_fs(where)
    if fs.exists(path):
        raise SpanRejected(f"span {span} of {config.pipeline} was added by someone else meanwhile; add again")
    fs.put_file(str(file), path)
    return AddedSpan(path=where, span=span, rows=rows)
