"""`kiln data add`'s checks and copy, without a stack: a span that fits is copied in as the next one;
one that does not is refused in one line and nothing is copied."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.cli.data_add import SpanRejected, add_span
from tasks.config import validate_config
from tests.data import write_churn_csv


def _config(tmp_path, **data):
    return validate_config({"pipeline": "churn", "task": {"type": "classification"},
                            "data": {"source": str(tmp_path / "spans" / "span-{SPAN}.csv"), "label_column": "churned",
                                     **data}}, "test")


def _spans(tmp_path) -> list[str]:
    folder = tmp_path / "spans"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_spans_are_added_in_turn_and_a_misfit_is_refused_with_nothing_copied(tmp_path) -> None:
    config = _config(tmp_path)
    first = add_span(config, write_churn_csv(tmp_path / "a.csv", rows=50))
    assert (first.span, first.rows, first.path) == (1, 50, str(tmp_path / "spans" / "span-1.csv"))
    second = add_span(config, write_churn_csv(tmp_path / "b.csv", rows=40, seed=5))
    assert second.span == 2 and Path(second.path).read_text() == (tmp_path / "b.csv").read_text()

    missing = tmp_path / "missing.csv"
    missing.write_text("tenure,plan,churned\n1,basic,yes\n")
    with pytest.raises(SpanRejected, match=r"missing.csv: missing columns: monthly, paperless, region \(required by span 2 "):
        add_span(config, missing)
    retyped = tmp_path / "retyped.csv"
    header, *rows = (tmp_path / "b.csv").read_text().splitlines()
    retyped.write_text("\n".join([header, *("many," + row.split(",", 1)[1] for row in rows)]) + "\n")
    with pytest.raises(SpanRejected, match="column 'tenure' holds string values, span 2 .* says int"):
        add_span(config, retyped)
    extra = tmp_path / "extra.csv"
    extra.write_text("tenure,plan,monthly,paperless,region,churned,bonus\n1,basic,2.0,true,north,yes,9\n")
    with pytest.raises(SpanRejected, match=r"extra.csv: unexpected columns: bonus \(not in span 2 "):
        add_span(config, extra)
    assert _spans(tmp_path) == ["span-1.csv", "span-2.csv"], "nothing copied, no temporary file left"


def test_without_spans_or_a_label_it_is_refused(tmp_path) -> None:
    plain = validate_config({"pipeline": "churn", "task": {"type": "classification"},
                             "data": {"source": str(tmp_path / "churn.csv"), "label_column": "churned"}}, "test")
    with pytest.raises(SpanRejected, match=r"data.source .*churn.csv has no \{SPAN\}"):
        add_span(plain, write_churn_csv(tmp_path / "a.csv", rows=10))
    unlabeled = tmp_path / "unlabeled.csv"
    unlabeled.write_text("tenure,plan\n1,basic\n")
    with pytest.raises(SpanRejected, match="label column 'churned' is not in the header"):
        add_span(_config(tmp_path), unlabeled)
    assert _spans(tmp_path) == []


def test_spans_on_object_storage_are_added_and_read_in_place(s3, tmp_path) -> None:
    from tasks.data.profile import profile_source
    from tasks.spans import span_file

    source = s3.url("churn", "span-{SPAN}.csv")
    config = validate_config({"pipeline": "churn", "task": {"type": "classification"},
                              "data": {"source": source, "label_column": "churned"}}, "test")
    first = add_span(config, write_churn_csv(tmp_path / "a.csv", rows=50))
    second = add_span(config, write_churn_csv(tmp_path / "b.csv", rows=40, seed=5))
    assert (first.path, second.path) == (s3.url("churn", "span-1.csv"), s3.url("churn", "span-2.csv"))
    assert s3.keys("churn/") == ["churn/span-1.csv", "churn/span-2.csv"]
    newest, span = span_file(source)
    assert (newest, span) == (second.path, 2) and profile_source(newest).rows == 40
