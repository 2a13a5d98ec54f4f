"""Running kiln-model-server in tests: a subprocess on free loopback ports, stopped by its fixture."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.processes import free_port

SERVER_BIN = str(Path(sys.executable).parent / "kiln-model-server")
__all__ = ["SERVER_BIN", "RunningServer", "free_port", "start_server", "wait_for"]


@dataclass
class RunningServer:
    process: subprocess.Popen
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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(log_dir: Path, *flags: str, timeout: float = 90) -> RunningServer:
    """Start kiln-model-server and wait until both ports accept connections (they open only when ready)."""
    grpc_port, rest_port = free_port(), free_port()
    log_path = log_dir / f"server-{grpc_port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [SERVER_BIN, f"--port={grpc_port}", f"--rest_api_port={rest_port}", *flags],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = RunningServer(process, grpc_port, rest_port, log_path)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"kiln-model-server exited with {process.returncode}:\n{server.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"kiln-model-server was not ready in {timeout}s:\n{server.log()[-3000:]}"
                )
            if "Exporting HTTP/REST API" in server.log():
                return server
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise


def wait_for(predicate, timeout: float = 30, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
