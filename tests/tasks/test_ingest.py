from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from infra.demo_data import HEADER
from tasks import ingest
from tasks.artifacts import read_artifact


def test_demo_data_is_the_full_digits_set(digits_csv: Path) -> None:
    with digits_csv.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == HEADER
    assert len(rows) == 1 + 1797
    values = {int(v) for row in rows[1:] for v in row[:-1]}
    assert values <= set(range(17))
    assert {int(row[-1]) for row in rows[1:]} == set(range(10))


def test_ingest_splits_deterministically_and_counts_rows(tiny_digits_csv, make_config, ctx, tmp_path) -> None:
    config = make_config(tiny_digits_csv, data={"num_shards": 3})
    uri = ingest.run(config, ctx)["examples"]
    props = read_artifact(uri, "Examples").properties
    counts = props["row_counts"]
    assert counts["train"] + counts["eval"] == 400
    assert 0.1 < counts["eval"] / 400 < 0.3  # eval_percent 20, by hash
    assert props["feature_columns"] == HEADER[:-1] and props["label_column"] == "label"
    for split in ingest.SPLITS:
        assert len(ingest.split_files(uri, split)) == 3
        assert len(ingest.load_split(uri, split)[1]) == counts[split]

    # Same data, other run and other row order: the same rows land in the same splits.
    lines = tiny_digits_csv.read_text().splitlines()
    shuffled = tmp_path / "reversed.csv"
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    again = ingest.run(make_config(shuffled, data={"num_shards": 3}), ctx.__class__(ctx.artifact_root, "digits", "rerun"))
    for split in ingest.SPLITS:
        first = sorted(e.SerializeToString() for e in ingest.iter_examples(uri, split))
        second = sorted(e.SerializeToString() for e in ingest.iter_examples(again["examples"], split))
        assert first == second


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"^data source not found: .*missing\.csv$"),
        ("", r"data\.csv: the CSV is empty \(no header row\)$"),
        ("pixel_0,pixel_1,label\n", r"data\.csv: the CSV has a header but no data rows$"),
        ("pixel_0,pixel_1\n1,2\n", r"data\.csv: label column 'label' is not in the header \(columns: pixel_0, pixel_1\)$"),
        ("pixel_0,pixel_1,label\n1,2,3\n4,oops,5\n", r"data\.csv line 3 column 'pixel_1': 'oops' is not a finite number$"),
        ("pixel_0,pixel_1,label\n1,2,3.5\n", r"data\.csv line 2 label column 'label': '3\.5' is not an integer$"),
        ("pixel_0,pixel_1,label\n1,2\n", r"data\.csv line 2: 2 fields, the header has 3$"),
    ],
    ids=["missing-path", "empty", "header-only", "no-label", "bad-value", "float-label", "short-row"],
)
def test_ingest_rejects_bad_input_in_one_line_and_writes_nothing(content, message, tmp_path, make_config, ctx) -> None:
    source = tmp_path / "missing.csv" if content is None else _write(tmp_path, content)
    with pytest.raises(ingest.IngestError, match=message) as caught:
        ingest.run(make_config(source), ctx)
    assert "\n" not in str(caught.value)
    assert not os.path.exists(ctx.output_uri("ingest", "examples"))
    ingest_dir = Path(ctx.output_uri("ingest", "examples")).parent
    assert not ingest_dir.exists() or not any(ingest_dir.iterdir())  # no staging leftovers
