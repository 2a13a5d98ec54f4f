"""Startup behaviour: flags, bad config files, failed initial loads, config-file polling, --prefer_tflite_model."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.servers import SERVER_BIN, wait_for
from tests.serving.conftest import half_plus_three_tflite

pytestmark = pytest.mark.slow


def run_to_exit(*flags: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([SERVER_BIN, "--port=0", *flags], capture_output=True, text=True, timeout=timeout)


def test_bad_model_config_file_fails_with_tf_serving_text(tmp_path):
    config = tmp_path / "bad.config"
    config.write_text("model_config_list { config { name: 'm' bogus_field: 1 } }\n")
    result = run_to_exit(f"--model_config_file={config}")
    assert result.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--no_such_flag=1"], "unrecognized arguments: --no_such_flag=1"),
        (["--rest_api_port=abc"], "argument --rest_api_port: invalid int value: 'abc'"),
        ([], "Both server_options.model_base_path and server_options.model_config_file are empty!"),
        (["--model_base_path=/x", "--batching_parameters_file=/x"], "only valid with --enable_batching"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, message):
    result = run_to_exit(*flags)
    assert result.returncode == 255
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_batching_parameters_file(tmp_path):
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size: 4\n")
    result = run_to_exit("--model_base_path=/x", "--enable_batching", f"--batching_parameters_file={params}")
    assert result.returncode == 255
    assert "Error parsing text-format tensorflow.serving.BatchingParameters" in result.stderr


def test_help_documents_the_loopback_default():
    result = subprocess.run([SERVER_BIN, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--bind_address" in result.stdout and "0.0.0.0" in result.stdout


def test_failed_initial_load_and_unavailable_labels_end_startup(test_models, tmp_path):
    broken = tmp_path / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a saved model")
    result = run_to_exit(f"--model_base_path={broken.parent}", "--max_num_load_retries=0")
    assert result.returncode == 255
    assert (
        "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: {{{name: default version: 1}"
        in result.stderr
    )

    test_models.install("half_plus_two", tmp_path / "ok", 1)
    config = tmp_path / "labels.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "ok"}" model_platform: "tensorflow" '
        'version_labels { key: "stable" value: 1 } } }\n'
    )
    result = run_to_exit(f"--model_config_file={config}")
    assert result.returncode == 255
    assert (
        "Request to assign label to version 1 of model m, which is not currently available" in result.stderr
    )


def test_config_file_polling_switches_models(server_factory, test_models, tmp_path):
    test_models.install("half_plus_two", tmp_path / "two", 1)
    test_models.install("half_plus_three", tmp_path / "three", 1)
    config = tmp_path / "models.config"

    def write(name, base):
        config.write_text(
            f'model_config_list {{ config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" }} }}\n'
        )

    write("two", tmp_path / "two")
    server = server_factory(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds", "1")
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        assert client.post("/v1/models/two:predict", json={"instances": [2.0]}).json() == {
            "predictions": [3.0]
        }
        write("three", tmp_path / "three")
        wait_for(
            lambda: client.post("/v1/models/three:predict", json={"instances": [2.0]}).status_code == 200
        )
        assert client.post("/v1/models/three:predict", json={"instances": [2.0]}).json() == {
            "predictions": [4.0]
        }
        assert client.get("/v1/models/two").json()["model_version_status"][0]["state"] == "END"


def test_prefer_tflite_model_serves_the_tflite_file(server_factory, test_models, tmp_path):
    # The folder's SavedModel is half_plus_two; the TFLite file computes half_plus_three.
    version = test_models.install("half_plus_two", tmp_path / "lite", 1)
    (version / "model.tflite").write_bytes(half_plus_three_tflite())
    server = server_factory(
        f"--model_base_path={tmp_path / 'lite'}", "--model_name=lite", "--prefer_tflite_model"
    )
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        response = client.post("/v1/models/lite:predict", json={"instances": [2.0, 4.0]})
        assert response.json() == {"predictions": [4.0, 5.0]}
        metadata = client.get("/v1/models/lite/metadata").json()
        assert set(metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]) == {
            "x"
        }


def test_reload_interrupts_a_load_waiting_to_retry(server_factory, test_models, tmp_path):
    """Defaults retry a failed load 5 times a minute apart; a new config must not wait for that."""
    import time

    import grpc
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    base = tmp_path / "retry"
    test_models.install("half_plus_two", base, 1)
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" }} }}\n'
    )
    server = server_factory(f"--model_config_file={config}", "--file_system_poll_wait_seconds=1")
    broken = base / ".tmp-2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    broken.rename(base / "2")
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        wait_for(lambda: "cannot be loaded" in server.log(), message="first failed attempt")
        assert client.get("/v1/models/m").json()["model_version_status"][0]["state"] == "LOADING"
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(
            f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" '
            "model_version_policy { specific { versions: 1 } } } }",
            request.config,
        )
        started = time.monotonic()
        with grpc.insecure_channel(server.grpc_target) as channel:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=20)
        assert time.monotonic() - started < 10
        statuses = client.get("/v1/models/m").json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in statuses] == [("2", "END"), ("1", "AVAILABLE")]
        assert statuses[0]["status"]["error_code"] != "OK"
