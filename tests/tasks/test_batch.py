"""Batch inference (tasks.batch, `kiln predict`): a registered churn version scores CSV and Parquet data the way
the server answers the same rows, sharded into part files that appear only when their shard finished."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from serving.client import RestClient
from tasks.batch import commit, job, scoring
from tasks.config import BatchConfig, load_config
from tasks.data.readers import DataError
from tasks.errors import BadInputError
from tasks.features import LabelSpec
from tasks.snapshot import pipeline_context

pytestmark = pytest.mark.slow


def _ctx(champion, run_id=None):
    config = load_config(champion["config"])
    return config, pipeline_context(config, str(champion["root"]), run_id or f"batch-{uuid.uuid4().hex[:8]}",
                                    champion["tracking"], None)


def _batch(data, output, **fields) -> BatchConfig:
    return BatchConfig(data=str(data), output=str(output), **fields)


def _run(champion, batch, unblessed_reason=None) -> dict:
    config, ctx = _ctx(champion)
    uri = job.plan(ctx, config, batch, unblessed_reason)
    for shard in range(job.Job.read(uri).shards):
        scoring.score_shard(uri, shard)
    return commit.commit(uri)


def test_batch_predictions_equal_the_servers_answers_row_by_row(churn_champion, churn_csv, tmp_path) -> None:
    out = tmp_path / "scored"
    summary = _run(churn_champion, _batch(churn_csv, out))
    assert summary["rows"] == 600 and summary["files"] == ["part-00000.parquet"] and summary["alias"] == "champion"
    assert (out / "_SUCCESS").exists() and not (out / "_temporary").exists()
    assert json.loads((out / "_kiln_batch.json").read_text())["rows"] == 600
    scored = pq.read_table(out / "part-00000.parquet")
    assert scored.column_names == ["row", "class", "class_id", "probabilities", "model_version"]
    assert scored.column("row").to_pylist() == list(range(1, 601)), "row keys: the CSV's data rows, in order"
    assert set(scored.column("model_version").to_pylist()) == {1}
    rows = pa_csv.read_csv(churn_csv, convert_options=pa_csv.ConvertOptions(strings_can_be_null=True)).to_pylist()
    instances = [{"tenure": r["tenure"], "plan": r["plan"], "monthly": r["monthly"] if r["monthly"] is not None
                  else float("nan"), "paperless": r["paperless"], "region": r["region"] or ""} for r in rows[:64]]
    with RestClient(churn_champion["rest"]) as client:
        served = client.predict("churn", instances, label="stable").outputs
    assert scored.column("class").to_pylist()[:64] == [a["class"] for a in served]
    probabilities = np.array(scored.column("probabilities").to_pylist()[:64])
    assert np.allclose(probabilities, [a["probabilities"] for a in served], atol=1e-5)
    run = MlflowClient(churn_champion["tracking"]).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["rows"] == 600
    assert run.data.tags["kiln.role"] == "batch" and run.data.tags["kiln.model_version"] == "1"


def test_a_sharded_parquet_folder_keys_every_row_by_file_and_row(churn_champion, churn_csv, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    table = pa_csv.read_csv(churn_csv)
    for part, (start, length) in enumerate([(0, 250), (250, 350)]):
        pq.write_table(table.slice(start, length), data / f"part-{part}.parquet", row_group_size=100)
    out = tmp_path / "scored"
    summary = _run(churn_champion, _batch(data, out, partition_bytes=1, shards=3))
    assert summary["shards"] == 3 and summary["rows"] == 600 and len(summary["files"]) == 7, "a row group each"
    scored = pq.read_table(out)  # the folder as a dataset: `_` files are skipped
    keys = sorted(zip(scored.column("file").to_pylist(), scored.column("row").to_pylist(), strict=True))
    assert keys == [("part-0.parquet", r) for r in range(1, 251)] + [("part-1.parquet", r) for r in range(1, 351)]


def test_a_csv_cut_in_byte_ranges_numbers_rows_from_the_files_start(churn_champion, churn_csv, tmp_path) -> None:
    out = tmp_path / "scored"
    summary = _run(churn_champion, _batch(churn_csv, out, partition_bytes=4096, output_format="csv", id_column=None))
    assert len(summary["files"]) > 2
    rows = sorted(r for f in summary["files"] for r in pa_csv.read_csv(out / f).column("row").to_pylist())
    assert rows == list(range(1, 601))
    header = pa_csv.read_csv(out / summary["files"][0]).column_names
    assert header == ["row", "class", "class_id", "probability_no", "probability_yes", "model_version"]


def test_an_id_column_is_the_row_key(churn_champion, churn_csv, tmp_path) -> None:
    with_ids = tmp_path / "ids.csv"
    lines = churn_csv.read_text().splitlines()
    with_ids.write_text("\n".join([f"customer,{lines[0]}"] + [f"c{i},{line}" for i, line in enumerate(lines[1:])]))
    summary = _run(churn_champion, _batch(with_ids, tmp_path / "scored", id_column="customer"))
    scored = pq.read_table(tmp_path / "scored" / summary["files"][0])
    assert scored.column_names[0] == "customer" and scored.column("customer").to_pylist()[:2] == ["c0", "c1"]


def test_a_shard_that_fails_leaves_no_output_and_the_job_no_success_marker(churn_champion, churn_csv,
                                                                         tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    lines = churn_csv.read_text().splitlines()
    (data / "a.csv").write_text("\n".join(lines[:301]) + "\n")
    bad = lines[301:]
    bad[150] = "abc," + bad[150].split(",", 1)[1]  # tenure is an integer column
    (data / "b.csv").write_text("\n".join([lines[0], *bad]) + "\n")
    out = tmp_path / "scored"
    config, ctx = _ctx(churn_champion)
    uri = job.plan(ctx, config, _batch(data, out, shards=2))
    scoring.score_shard(uri, 0)
    with pytest.raises(BadInputError, match=r"b\.csv column 'tenure' row 151: value 'abc' is not"):
        scoring.score_shard(uri, 1)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"], "only the finished shard's file"
    with pytest.raises(job.BatchError, match=r"shard 1 did not finish; the output is incomplete \(no _SUCCESS\)"):
        commit.commit(uri)
    assert not (out / "_SUCCESS").exists()
    run = MlflowClient(churn_champion["tracking"]).get_run(job.Job.read(uri).mlflow_run_id)
    assert run.info.status == "FAILED"


def test_an_output_that_exists_is_refused_unless_overwrite(churn_champion, churn_csv, tmp_path) -> None:
    out = tmp_path / "scored"
    out.mkdir()
    (out / "old.parquet").write_text("old")
    config, ctx = _ctx(churn_champion)
    with pytest.raises(job.BatchError, match=r"scored exists; pass --overwrite"):
        job.plan(ctx, config, _batch(churn_csv, out))
    no_plan = tmp_path / "noplan.csv"
    no_plan.write_text("tenure,monthly\n1,2\n")
    with pytest.raises(DataError, match="no column the model takes 'plan'"):
        job.plan(ctx, config, _batch(no_plan, out, overwrite=True))
    assert (out / "old.parquet").exists(), "a refused job leaves the old output as it was"
    _run(churn_champion, _batch(churn_csv, out, overwrite=True))
    assert not (out / "old.parquet").exists() and (out / "_SUCCESS").exists()


def test_an_unblessed_version_scores_only_with_a_reason(churn_champion, churn_csv, tmp_path) -> None:
    client = MlflowClient(churn_champion["tracking"])
    client.set_model_version_tag(churn_champion["model"], "1", "blessed", "false")
    try:
        config, ctx = _ctx(churn_champion)
        with pytest.raises(job.BatchError, match=r"v1 is not blessed .*--allow-unblessed REASON"):
            job.plan(ctx, config, _batch(churn_csv, tmp_path / "scored", version=1))
        summary = _run(churn_champion, _batch(churn_csv, tmp_path / "scored", version=1), "backfill for audit")
    finally:
        client.set_model_version_tag(churn_champion["model"], "1", "blessed", "true")
    assert summary["unblessed_reason"] == "backfill for audit" and summary["alias"] is None
    assert client.get_run(summary["mlflow_run_id"]).data.tags["kiln.unblessed_reason"] == "backfill for audit"


def test_bad_requests_are_one_line_naming_what_is_wrong(churn_champion, churn_csv, tmp_path) -> None:
    config, ctx = _ctx(churn_champion)
    with pytest.raises(job.BatchError, match=r"has no alias @candidate \(aliases: @champion v1\)"):
        job.plan(ctx, config, _batch(churn_csv, tmp_path / "a", alias="candidate"))
    with pytest.raises(job.BatchError, match=r"has no version 9"):
        job.plan(ctx, config, _batch(churn_csv, tmp_path / "a", version=9))
    no_plan = tmp_path / "noplan.csv"
    no_plan.write_text("tenure,monthly\n1,2\n")
    with pytest.raises(DataError, match=r"noplan\.csv: no column the model takes 'plan'"):
        job.plan(ctx, config, _batch(no_plan, tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_kiln_predict_scores_with_progress_and_a_json_summary(churn_champion, churn_csv, tmp_path,
                                                              monkeypatch) -> None:
    from infra.cli.app import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", churn_champion["tracking"])
    monkeypatch.setenv("KILN_ARTIFACT_ROOT", str(churn_champion["root"]))
    args = ["predict", str(churn_champion["config"]), str(churn_csv), "--out", str(tmp_path / "scored"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 600 and summary["version"] == 1
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.stderr


def test_a_regression_writes_one_prediction_column() -> None:
    label = LabelSpec(column="price", value_type="float", task="regression")
    table = scoring.prediction_table({"row": pa.array([1, 2])}, {"prediction": np.array([1.5, 2.5], np.float32)},
                                     label, 3, "parquet")
    assert table.column_names == ["row", "prediction", "model_version"]
    assert table.column("model_version").to_pylist() == [3, 3]
