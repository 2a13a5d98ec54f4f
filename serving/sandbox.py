"""A throwaway model server for InfraValidator: its own process, free loopback ports, an empty config and
a private model base path; the candidate is pushed into it through the protocol, like into production.

The binary is kiln-model-server by default; `tensorflow_model_server` takes the same flags.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from common.processes import free_ports, log_tail, stop_process_group
from serving.target import ServingTarget

READINESS_PROBE = "/v1/models/kiln-readiness-probe"  # any unknown model: a JSON 404 means the REST API is up


class SandboxError(RuntimeError):
    """The sandbox server did not start; the message carries its last log line."""


@contextmanager
def sandbox_server(binary: str, start_timeout: float = 120) -> Iterator[ServingTarget]:
    folder = Path(tempfile.mkdtemp(prefix="kiln-sandbox-"))
    config = folder / "models.config"
    config.write_text("model_config_list {\n}\n")
    grpc_port, rest_port = free_ports(2)
    log_path = folder / "server.log"
    command = [binary, f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--model_config_file={config}",
               "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0",
               "--prefer_tflite_model=true"]  # as every kiln server: a TFLite folder is validated as TFLite
    command[0] = _executable(binary)
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
    except FileNotFoundError:
        shutil.rmtree(folder, ignore_errors=True)
        raise SandboxError(f"sandbox server {binary!r} not found") from None
    rest_url = f"http://127.0.0.1:{rest_port}"
    try:
        _wait_ready(process, rest_url, log_path, start_timeout)
        yield ServingTarget(grpc_address=f"127.0.0.1:{grpc_port}", rest_url=rest_url,
                            model_base_path=folder / "models", config_file=config)
    finally:
        stop_process_group(process.pid, timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def _executable(binary: str) -> str:
    """A name on PATH, else the one installed beside this Python (kiln's own kiln-model-server)."""
    beside = Path(sys.executable).parent / binary
    return shutil.which(binary) or (str(beside) if beside.exists() else binary)


def _wait_ready(process: subprocess.Popen[bytes], rest_url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SandboxError(f"sandbox server exited with {process.returncode}: {log_tail(log_path, 1)[0]}")
        try:
            if httpx.get(rest_url + READINESS_PROBE, timeout=2).status_code == 404:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SandboxError(f"sandbox server not ready after {timeout:.0f}s: {log_tail(log_path, 1)[0]}")
