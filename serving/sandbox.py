"""A throwaway model server for InfraValidator: its own process, free loopback ports, an empty config and
a private model base path; the candidate is pushed into it through the protocol, like into production.

The binary is kiln-model-server by default; `tensorflow_model_server` takes the same flags.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from common.processes import (
    STOP_GRACE_SECONDS,
    ProcessHandle,
    ServerNotReady,
    free_ports,
    popen_in_own_session,
    start_server_process,
    stop_process_group,
)
from serving.target import ServingTarget

READINESS_PROBE = "/v1/models/kiln-readiness-probe"  # any unknown model: a JSON 404 means the REST API is up


class SandboxError(RuntimeError):
    """The sandbox server did not start; the message carries its last log lines."""


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
    rest_url = f"http://127.0.0.1:{rest_port}"
    try:
        process = start_server_process("sandbox server", command, log_path, lambda: _answers(rest_url), start_timeout,
                                       launch=start_sandbox_process)
    except (FileNotFoundError, ServerNotReady) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise SandboxError(f"sandbox server {binary!r} not found" if isinstance(exc, FileNotFoundError)
                           else str(exc)) from None
    try:
        yield ServingTarget(grpc_address=f"127.0.0.1:{grpc_port}", rest_url=rest_url,
                            model_base_path=folder / "models", config_file=config)
    finally:
        stop_process_group(process.pid, STOP_GRACE_SECONDS)
        shutil.rmtree(folder, ignore_errors=True)


def start_sandbox_process(argv: list[str], env: dict[str, str] | None, log_path: Path) -> ProcessHandle:
    """The server's command in a session of its own. A module-level function so that the tests can fork kiln's
    server from an already-warm Python instead (tests/warm_processes.py)."""
    return popen_in_own_session(argv, env, log_path)


def _executable(binary: str) -> str:
    """A name on PATH, else the one installed beside this Python (kiln's own kiln-model-server)."""
    beside = Path(sys.executable).parent / binary
    return shutil.which(binary) or (str(beside) if beside.exists() else binary)


def _answers(rest_url: str) -> bool:
    try:
        return httpx.get(rest_url + READINESS_PROBE, timeout=2).status_code == 404
    except httpx.HTTPError:
        return False
