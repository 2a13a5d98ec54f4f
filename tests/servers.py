"""Running kiln-model-server in tests: a process on free loopback ports (forked warm, tests/warm_processes.py),
stopped by its fixture."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.processes import (
    STOP_GRACE_SECONDS,
    ProcessHandle,
    free_port,
    start_server_process,
    stop_process_group,
)
from tests.warm_processes import launch_model_server

SERVER_BIN = str(Path(sys.executable).parent / "kiln-model-server")
__all__ = ["SERVER_BIN", "RunningServer", "free_port", "start_server", "wait_for"]


@dataclass
class RunningServer:
    process: ProcessHandle
    grpc_port: int
    rest_port: int
    log_path: Path

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process_group(self.process.pid, STOP_GRACE_SECONDS)


def start_server(log_dir: Path, *flags: str, timeout: float = 90) -> RunningServer:
    """Start kiln-model-server (forked warm, see tests/warm_processes.py) and wait until its REST API is exported
    (both ports open only when it is ready)."""
    grpc_port, rest_port = free_port(), free_port()
    log_path = log_dir / f"server-{grpc_port}.log"

    def ready() -> bool:
        return "Exporting HTTP/REST API" in log_path.read_text(errors="replace")

    process = start_server_process("kiln-model-server", [SERVER_BIN, f"--port={grpc_port}",
                                                         f"--rest_api_port={rest_port}", *flags],
                                   log_path, ready, timeout, interval=0.05, tail_lines=30, launch=launch_model_server)
    return RunningServer(process, grpc_port, rest_port, log_path)


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
