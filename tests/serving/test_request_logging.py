"""Request logging (a model's logging_config): PredictionLog TFRecords per model and version, read back with TF
Serving's own protos and TensorFlow's own TFRecord reader."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import threading

import grpc
import httpx
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    inference_pb2,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.servers import SERVER_BIN, wait_for

pytestmark = pytest.mark.slow


def model_entry(name: str, base, prefix=None, rate: float = 1.0, collector: str = "file", extra: str = "") -> str:
    logging = ""
    if prefix is not None:
        logging = (f'logging_config {{ log_collector_config {{ type: "{collector}" filename_prefix: "{prefix}" }} '
                   f"sampling_config {{ sampling_rate: {rate} }} }}")
    return f'config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" {extra} {logging} }}'


def write_config(path, *entries: str):
    path.write_text("model_config_list { " + " ".join(entries) + " }\n")
    return path


def read_logs(folder) -> list[prediction_log_pb2.PredictionLog]:
    """Every published file under `folder`, read whole by TensorFlow (a truncated record raises DataLossError)."""
    files = sorted(str(p) for p in folder.rglob("*.tfrecord"))
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)] \
        if files else []  # fmt: skip


def log_count(rest: httpx.Client, model: str, status: str) -> int:
    page = rest.get("/monitoring/prometheus/metrics").text
    found = re.search(rf':tensorflow:serving:request_log_count{{model_name="{model}",status="{status}"}} (\d+)', page)
    return int(found.group(1)) if found else 0


@pytest.fixture(scope="module")
def logging_server(test_models, server_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("request_logging")
    logs = root / "logs"
    (root / "not_a_folder").write_text("a file where the log folder should be")
    bases = {name: root / "models" / name for name in ("logged", "sampled", "unwritable")}
    test_models.install("half_plus_two", bases["logged"], 123)
    test_models.install("half_plus_three", bases["logged"], 124)
    test_models.install("half_plus_two", bases["sampled"], 1)
    test_models.install("half_plus_two", bases["unwritable"], 1)
    config = write_config(
        root / "models.config",
        model_entry("logged", bases["logged"], logs, extra='model_version_policy { all {} } '
                                                           'version_labels { key: "stable" value: 123 }'),
        model_entry("sampled", bases["sampled"], logs, rate=0.5),
        model_entry("unwritable", bases["unwritable"], root / "not_a_folder" / "logs"),
    )
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    server = server_factory(f"--model_config_file={config}", f"--monitoring_config_file={monitoring}",
                            "--allow_version_labels_for_unavailable_models", "--kiln_request_log_max_file_seconds=0.2")
    with httpx.Client(base_url=server.rest_url, timeout=30) as rest:
        yield server, rest, logs


def test_records_parse_with_tf_serving_protos_and_carry_the_version_used(logging_server):
    server, rest, logs = logging_server
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "logged"
        request.model_spec.version.value = 124
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
        stub.Predict(request, timeout=30)
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name = "logged"
        regress.model_spec.signature_name = "regress_x_to_y"
        regress.input.example_list.examples.add().features.feature["x"].float_list.value.append(4.0)
        stub.Regress(regress, timeout=30)
    assert rest.post("/v1/models/logged/labels/stable:predict", json={"instances": [3.0]}).json() == \
        {"predictions": [3.5]}  # fmt: skip
    classified = rest.post("/v1/models/logged:classify",
                           json={"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert classified.status_code == 200

    records = wait_for(lambda: len(read_logs(logs / "logged")) == 4 and read_logs(logs / "logged"), timeout=30,
                       message="4 records of model logged")
    by_kind = {r.WhichOneof("log_type"): r for r in records if r.WhichOneof("log_type") != "predict_log"}
    predicts = [r for r in records if r.WhichOneof("log_type") == "predict_log"]
    grpc_predict = next(r for r in predicts if r.predict_log.request.model_spec.HasField("version"))
    rest_predict = next(r for r in predicts if r.predict_log.request.model_spec.version_label == "stable")

    assert grpc_predict.log_metadata.model_spec.version.value == 124
    assert list(tf.make_ndarray(grpc_predict.predict_log.response.outputs["y"])) == [3.5, 4.0]  # half plus three
    assert rest_predict.log_metadata.model_spec.version.value == 123  # the label, resolved
    assert tf.make_ndarray(rest_predict.predict_log.request.inputs["x"]).tolist() == [3.0]
    assert tf.make_ndarray(rest_predict.predict_log.response.outputs["y"]).tolist() == [3.5]
    assert by_kind["regress_log"].log_metadata.model_spec.version.value == 124  # latest
    assert by_kind["regress_log"].regress_log.response.result.regressions[0].value == pytest.approx(5.0)
    assert by_kind["classify_log"].classify_log.request.input.example_list.examples[0] \
        .features.feature["x"].float_list.value[0] == 2.0  # fmt: skip
    for record in records:
        assert record.log_metadata.sampling_config.sampling_rate == 1.0
        assert list(record.log_metadata.saved_model_tags) == ["serve"]  # --saved_model_tags, as TF Serving logs
        assert record.log_metadata.timestamp_secs > 0
    # Files are per model and version.
    assert {p.parent.name for p in (logs / "logged").rglob("*.tfrecord")} == {"123", "124"}
    assert log_count(rest, "logged", "logged") == 4


def test_a_multi_inference_is_logged_whole_with_the_version_that_answered(logging_server):
    server, rest, logs = logging_server
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name, task.model_spec.signature_name = "logged", signature
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    with grpc.insecure_channel(server.grpc_target) as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).MultiInference(request, timeout=30)

    def logged():
        return [r for r in read_logs(logs / "logged") if r.WhichOneof("log_type") == "multi_inference_log"]

    [record] = wait_for(logged, timeout=30, message="the multi-inference record")
    assert record.multi_inference_log.request == request
    assert record.log_metadata.model_spec.version.value == 124  # the latest of the policy's versions
    results = record.multi_inference_log.response.results
    assert results[0].regression_result.regressions[0].value == pytest.approx(4.0)  # half plus three of 2.0


def test_sampling_half_logs_about_half_within_binomial_bounds(logging_server):
    server, rest, logs = logging_server
    requests, rate = 400, 0.5
    for _ in range(requests):
        assert rest.post("/v1/models/sampled:predict", json={"instances": [1.0]}).status_code == 200
    wait_for(lambda: log_count(rest, "sampled", "logged") + log_count(rest, "sampled", "dropped") > 0, timeout=10)
    logged = wait_for(lambda: (n := len(read_logs(logs / "sampled"))) == log_count(rest, "sampled", "logged") and n,
                      timeout=30, message="every logged record published")
    five_sigma = 5 * math.sqrt(requests * rate * (1 - rate))  # 50: a false alarm about once in 1.7 million runs
    assert abs(logged - requests * rate) <= five_sigma, logged
    assert log_count(rest, "sampled", "dropped") == 0


def test_an_unwritable_log_path_never_fails_a_request_and_is_counted(logging_server):
    server, rest, _ = logging_server
    for _ in range(5):
        assert rest.post("/v1/models/unwritable:predict", json={"instances": [1.0]}).json() == {"predictions": [2.5]}
    wait_for(lambda: log_count(rest, "unwritable", "failed") == 5, timeout=10, message="5 failed records")
    assert server.log().count("Request log: cannot write to") == 1  # reported once, not per record
    assert log_count(rest, "unwritable", "logged") == 0


def test_an_unknown_log_collector_type_is_refused_with_tf_serving_text(test_models, tmp_path):
    test_models.install("half_plus_two", tmp_path / "m", 1)
    config = write_config(tmp_path / "models.config", model_entry("m", tmp_path / "m", tmp_path / "l",
                                                                  collector="kafka"))
    result = subprocess.run([SERVER_BIN, "--port=0", f"--model_config_file={config}"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 255
    assert "Failed to start server. Error: NOT_FOUND: Cannot find LogCollector::Factory for type: kafka" \
        in result.stderr  # fmt: skip


def test_kill_9_while_logging_leaves_only_whole_records(test_models, server_factory, tmp_path):
    from serving.model_server.request_log_files import IN_PROGRESS, VersionLogFolder

    test_models.install("half_plus_two", tmp_path / "m", 1)
    logs = tmp_path / "logs"
    config = write_config(tmp_path / "models.config", model_entry("m", tmp_path / "m", logs))
    # Small files: many are published (renamed) while requests keep coming, one is being written at the kill.
    server = server_factory(f"--model_config_file={config}", "--kiln_request_log_max_file_bytes=4000")
    sent, stop = [0], threading.Event()

    def load():
        with httpx.Client(base_url=server.rest_url, timeout=5) as client:
            while not stop.is_set():
                try:
                    client.post("/v1/models/m:predict", json={"instances": [[float(i) for i in range(50)]]})
                except httpx.HTTPError:
                    return
                sent[0] += 1

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(list(logs.rglob("*.tfrecord"))) >= 3, timeout=30, message="published files")
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)

    published = read_logs(logs)  # raises DataLossError on any truncated or corrupt record
    assert published and all(r.predict_log.response.model_spec.version.value == 1 for r in published)
    # What the killed process was writing, if it was between files at the kill: nothing, is published by the next
    # writer, cut after its last whole record (test_an_abandoned_file_is_cut_after_its_last_whole_record).
    folder = VersionLogFolder(str(logs), "m", 1)
    assert folder.recover_abandoned(open_here=set()) <= 1
    assert not list(folder.local.glob(f"*{IN_PROGRESS}"))
    assert len(read_logs(logs)) >= len(published)


def test_an_abandoned_file_is_cut_after_its_last_whole_record(tmp_path):
    """A file a killed writer left (this process stands in for it: its own file, not open here) is published
    with its whole records; the half record after them is cut."""
    from serving.model_server.request_log_files import IN_PROGRESS, LogFile, VersionLogFolder

    folder = VersionLogFolder(str(tmp_path / "logs"), "m", 1)
    left = LogFile(folder, 0)
    records = [prediction_log_pb2.PredictionLog(log_metadata={"model_spec": {"name": "m", "version": {"value": 1}}},
                                                predict_log={}) for _ in range(3)]
    for record in records:
        left.write(record.SerializeToString())
    left.flush()
    with open(left.path, "ab") as handle:
        handle.write(b"\x10\x00\x00")  # the start of a next record the kill cut short
    assert folder.recover_abandoned(open_here={left.path}) == 0, "a file still open here is not touched"
    assert folder.recover_abandoned(open_here=set()) == 1
    assert not list(folder.local.glob(f"*{IN_PROGRESS}"))
    assert read_logs(tmp_path / "logs") == records


def test_a_log_on_object_storage_is_uploaded_whole_when_each_file_closes(test_models, server_factory, s3, tmp_path):
    from common import storage

    test_models.install("half_plus_two", tmp_path / "m", 1)
    prefix = s3.url("request-logs")
    config = write_config(tmp_path / "models.config", model_entry("m", tmp_path / "m", prefix))
    server = server_factory(f"--model_config_file={config}", "--kiln_request_log_max_file_seconds=0.2")
    with httpx.Client(base_url=server.rest_url, timeout=30) as rest:
        for value in (1.0, 2.0, 3.0):
            assert rest.post("/v1/models/m:predict", json={"instances": [value]}).status_code == 200

    def uploaded() -> list[prediction_log_pb2.PredictionLog]:
        local = tmp_path / "downloaded"
        return read_logs(local) if storage.download_dir(prefix, local) else []

    records = wait_for(lambda: len(found := uploaded()) == 3 and found, timeout=30, message="3 records on S3")
    assert sorted(tf.make_ndarray(r.predict_log.request.inputs["x"]).tolist()[0] for r in records) == [1.0, 2.0, 3.0]
    assert all(key.startswith("request-logs/m/1/") for key in s3.keys("request-logs/")), "model/version folders"
    assert not [k for k in s3.keys("request-logs/") if "inprogress" in k], "only closed files are uploaded"
