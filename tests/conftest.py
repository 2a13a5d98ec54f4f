"""Shared test setup: legacy Keras before TensorFlow loads, quiet TF logs, free loopback ports."""

from __future__ import annotations

import os
import socket

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def port_factory():
    """Call it for each port a test needs."""
    return free_port


@pytest.fixture(scope="session")
def tiny_digits_csv(tmp_path_factory):
    """The first 400 rows of the demo data set: enough for a >0.8 model in a few epochs."""
    from tasks.demo_data import write_digits_csv

    full = write_digits_csv(tmp_path_factory.mktemp("digits") / "digits.csv")
    lines = full.read_text().splitlines()
    tiny = full.with_name("tiny.csv")
    tiny.write_text("\n".join(lines[:401]) + "\n")
    return tiny


@pytest.fixture
def model_server(tmp_path, port_factory):
    """A kiln-model-server with an empty model config, as `kiln up` starts it; yields its target."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    from serving.deployer import ServingTarget

    config = tmp_path / "serving" / "models.config"
    config.parent.mkdir(parents=True)
    config.write_text("model_config_list {\n}\n")
    rest, grpc_port = port_factory(), port_factory()
    log = (tmp_path / "model-server.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "kiln-model-server"), f"--port={grpc_port}", f"--rest_api_port={rest}",
         f"--model_config_file={config}", "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    target = ServingTarget(grpc_address=f"127.0.0.1:{grpc_port}", rest_url=f"http://127.0.0.1:{rest}",
                           model_base_path=tmp_path / "serving" / "models", config_file=config)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{target.rest_url}/v1/models/probe", timeout=2).status_code == 404:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "model-server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "kiln-model-server did not become ready"
            time.sleep(0.2)
        yield target
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
