"""Shared test setup: legacy Keras before TensorFlow loads, quiet TF logs, free loopback ports."""

from __future__ import annotations

import os

import pytest

import common  # noqa: F401 - TF_USE_LEGACY_KERAS before any test loads TensorFlow
from tests.servers import free_port, start_server

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests last: they share one embedded stack (tests/e2e/conftest.py), which then stops
    when the session ends instead of running beside every other test. The browser test last of all: its
    run registers a kiln-digits version, and the other digits runs count versions from 1."""
    items.sort(key=lambda item: ("/tests/e2e/" in str(item.path), item.path.name == "test_browser.py"))


@pytest.fixture
def port_factory():
    """Call it for each port a test needs."""
    return free_port


@pytest.fixture(scope="session")
def tiny_digits_csv(tmp_path_factory):
    """The first 400 rows of the demo data set: enough for a >0.8 model in a few epochs."""
    from infra.cli.demo_data import write_digits_csv

    full = write_digits_csv(tmp_path_factory.mktemp("digits") / "digits.csv")
    lines = full.read_text().splitlines()
    tiny = full.with_name("tiny.csv")
    tiny.write_text("\n".join(lines[:401]) + "\n")
    return tiny


@pytest.fixture(scope="session", autouse=True)
def session_download_cache(tmp_path_factory):
    """Downloads from object storage go to a cache of this session's own (never the machine's shared one in
    the temp folder, which other runs fill); tests that use S3 get one of their own (`s3`)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KILN_CACHE_DIR", str(tmp_path_factory.mktemp("kiln-cache")))
        yield


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback for the session, with the AWS_* variables set; tests take buckets of
    their own from it (`s3`, `module_s3`), so no state passes from one test to another."""
    from tests.s3 import moto_s3

    with moto_s3() as server:
        yield server


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch, request):
    """A bucket of this test's own, and a download cache of its own (kiln-model-servers it starts inherit it)."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "kiln-cache"))
    return s3_server.new_bucket(request.node.name[:30])


@pytest.fixture(scope="module")
def module_s3(s3_server, request):
    """A bucket for one module's shared fixtures (a model trained once, an MLflow server on S3)."""
    return s3_server.new_bucket(request.module.__name__.rsplit(".", 1)[-1][:30])


@pytest.fixture
def model_server(tmp_path):
    """A kiln-model-server with an empty model config and the flags `kiln up` starts it with (a version's format
    follows its folder: --prefer_tflite_model); yields its target."""
    from serving.target import ServingTarget

    config = tmp_path / "serving" / "models.config"
    config.parent.mkdir(parents=True)
    config.write_text("model_config_list {\n}\n")
    server = start_server(tmp_path, f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                          "--max_num_load_retries=0", "--prefer_tflite_model=true")
    try:
        yield ServingTarget(grpc_address=server.grpc_target, rest_url=server.rest_url,
                            model_base_path=tmp_path / "serving" / "models", config_file=config)
    finally:
        server.stop()


@pytest.fixture
def s3_model_server(s3, tmp_path):
    """kiln-model-server reading its models.config and model base path from S3 (this test's bucket), as TF
    Serving would; yields its target."""
    from common import storage
    from serving.target import ServingTarget

    config = s3.url("serving", "models.config")
    storage.write_text(config, "model_config_list {\n}\n")
    server = start_server(tmp_path, f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                          "--max_num_load_retries=0", "--prefer_tflite_model=true")
    try:
        yield ServingTarget(grpc_address=server.grpc_target, rest_url=server.rest_url,
                            model_base_path=s3.url("serving", "models"), config_file=config)
    finally:
        server.stop()
