"""Served traffic as the drift monitor reads it (tasks.traffic): request logs in kiln-model-server's layout,
PredictionLog records of churn requests, read back into the trained columns and compared with the champion's
training statistics (skew) and with the previous window (drift)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from tasks import traffic
from tasks.artifacts.model import Model
from tasks.artifacts.statistics import ExampleStatistics
from tasks.config import DriftConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def churn(trained_churn):
    baseline = ExampleStatistics.read(trained_churn["statistics"]).statistics("train").datasets[0]
    return baseline, Model.read(trained_churn["model"]).preprocessing


def _rows(churn_csv: Path, shifted: bool, count: int, seed: int) -> list[dict]:
    with churn_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = random.Random(seed)
    picked = [rng.choice(rows) for _ in range(count)]
    if shifted:  # long-standing customers on the premium plan only: not what the model was trained on
        picked = [{**row, "tenure": str(rng.randint(66, 72)), "plan": "premium"} for row in picked]
    return picked


def write_log(folder: Path, name: str, rows: list[dict], per_request: int = 4) -> Path:
    """Predict requests of `per_request` rows each, as kiln-model-server logs them."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with tf.io.TFRecordWriter(str(path)) as writer:
        for start in range(0, len(rows), per_request):
            chunk = rows[start:start + per_request]
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "churn"
            request.model_spec.version.value = 1
            request.inputs["tenure"].CopyFrom(tf.make_tensor_proto([int(r["tenure"]) for r in chunk], tf.int64))
            request.inputs["plan"].CopyFrom(tf.make_tensor_proto([r["plan"].encode() for r in chunk], tf.string))
            request.inputs["monthly"].CopyFrom(tf.make_tensor_proto(
                [float(r["monthly"]) if r["monthly"] else float("nan") for r in chunk], tf.float32))
            request.inputs["paperless"].CopyFrom(tf.make_tensor_proto([r["paperless"] == "true" for r in chunk],
                                                                      tf.bool))
            request.inputs["region"].CopyFrom(tf.make_tensor_proto([r["region"].encode() for r in chunk], tf.string))
            logged = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(logged.SerializeToString())
    return path


def test_logged_traffic_like_the_training_data_shows_no_skew(churn, churn_csv, tmp_path) -> None:
    baseline, contract = churn
    folder = Path(traffic.log_folder(str(tmp_path / "logs"), "churn", 1))
    write_log(folder, "20261207T100000.000000Z-h-1-1.tfrecord", _rows(churn_csv, False, 600, seed=1))
    (folder / ".20261207T110000.000000Z-h-1-2.tfrecord.inprogress").write_bytes(b"half")
    files = traffic.new_files(str(folder), set())
    assert [Path(f).name for f in files] == ["20261207T100000.000000Z-h-1-1.tfrecord"], "published files only"
    window = traffic.read_window(files, contract, baseline)
    assert (window.requests, window.rows) == (150, 600)
    skew = {f.feature: f for f in traffic.skew(baseline, window, DriftConfig(), "churned")}
    assert not any(f.drifted for f in skew.values()), [f for f in skew.values() if f.drifted]
    assert skew["tenure"].distance is not None and skew["plan"].distance is not None


def test_shifted_traffic_is_skewed_and_drifts_from_the_previous_window(churn, churn_csv, tmp_path) -> None:
    baseline, contract = churn
    folder = Path(traffic.log_folder(str(tmp_path / "logs"), "churn", 1))
    state = traffic.state_uri(str(tmp_path / "artifacts"), "churn", 1)
    write_log(folder, "20261207T100000.000000Z-h-1-1.tfrecord", _rows(churn_csv, False, 400, seed=2))
    seen, previous = traffic.load_state(state)
    first = traffic.read_window(traffic.new_files(str(folder), seen), contract, baseline)
    traffic.save_state(state, seen, first)

    write_log(folder, "20261207T120000.000000Z-h-1-2.tfrecord", _rows(churn_csv, True, 400, seed=3))
    seen, previous = traffic.load_state(state)
    files = traffic.new_files(str(folder), seen)
    assert [Path(f).name for f in files] == ["20261207T120000.000000Z-h-1-2.tfrecord"], "each file is read once"
    second = traffic.read_window(files, contract, baseline)
    skew = {f.feature: f for f in traffic.skew(baseline, second, DriftConfig(), "churned")}
    drift = {f.feature: f for f in traffic.window_drift(baseline, previous, second.observed, DriftConfig(), "churned")}
    assert skew["tenure"].drifted and skew["plan"].drifted
    assert drift["tenure"].drifted and drift["plan"].drifted
    assert not drift["region"].drifted and not drift["monthly"].drifted, "the features that did not move"


def test_the_monitor_reports_the_champions_shifted_traffic_as_drift_once_per_window(churn_champion, churn_csv,
                                                                                   tmp_path) -> None:
    import json

    from mlflow import MlflowClient

    from tasks.artifacts.drift import DriftReport
    from tasks.snapshot import Deployment
    from tasks.step_runner import run_on_pipeline

    logs = tmp_path / "logs"
    config = tmp_path / "monitored.yaml"
    config.write_text(churn_champion["config"].read_text()
                      + f"serving: {{request_log: {{sampling_rate: 1.0, path: {logs}}}}}\nmonitor: {{min_requests: 50}}\n")
    deployment = Deployment(artifact_root=str(tmp_path / "artifacts"), tracking_uri=churn_champion["tracking"])
    folder = Path(traffic.log_folder(str(logs), "churn", 1))

    def check(run_id: str):
        result = run_on_pipeline("check_drift", str(config), deployment, run_id)
        return result, DriftReport.read(result["drift"]).properties

    write_log(folder, "20261207T100000.000000Z-h-1-1.tfrecord", _rows(churn_csv, False, 100, seed=4))
    result, report = check("monitor-1")
    assert report.traffic.requests == 25 and "50 are measured" in report.traffic.note and not result["drifted"]

    write_log(folder, "20261207T110000.000000Z-h-1-2.tfrecord", _rows(churn_csv, False, 300, seed=5))
    result, report = check("monitor-2")
    assert report.traffic.requests == 100 and report.traffic.files == 2, "the files too few to measure waited"
    assert not result["drifted"] and report.span is None and report.features == [], "no spans: traffic only"

    write_log(folder, "20261207T120000.000000Z-h-1-3.tfrecord", _rows(churn_csv, True, 400, seed=6))
    result, report = check("monitor-3")
    assert report.traffic.files == 1 and result["drifted"]
    assert {"served skew: tenure", "served drift: tenure"} <= set(result["drifted_features"])
    runs = MlflowClient(churn_champion["tracking"]).search_runs(
        [MlflowClient(churn_champion["tracking"]).get_experiment_by_name("kiln").experiment_id],
        filter_string="tags.`kiln.run_id` = 'monitor-3'")
    assert runs[0].data.metrics["served_requests"] == 100 and runs[0].data.metrics["skew_tenure"] > 0.1
    assert json.loads(Path(traffic.state_uri(str(tmp_path / "artifacts"), "churn", 1)).read_text())["files"][-1] \
        == "20261207T120000.000000Z-h-1-3.tfrecord"
