"""kiln's Python processes for tests (model servers, training workers), forked from a Python that has already
imported TensorFlow.

Such a process spends most of its start importing TensorFlow (about 4 CPU-seconds), and the suite starts over a
hundred. multiprocessing's forkserver imports those modules once per pytest worker, in a process of its own
that never runs a TensorFlow op, and forks each child from it. The child then behaves like the command
subprocess would start: its own session, stdin closed, output to the log file, the caller's environment and
working directory, the entry point's return value as exit code.

What starts them: `tests/servers.py` for the servers tests start; for the product's own starts, the session
fixture in `tests/conftest.py` swaps the seams `tasks.training.launcher.start_worker_process` and
`serving.sandbox.start_sandbox_process`. The commands themselves are still what runs wherever a test starts a
separate Python (the embedded stack's tasks, the launcher scripts of the fault tests, the CLI tests).
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from common.processes import ProcessHandle, popen_in_own_session
from tasks.training.launcher import LAUNCHER_PID_ENV

# `common` first: it sets TF_USE_LEGACY_KERAS, which must precede TensorFlow.
PRELOAD = [
    "common",
    "tensorflow",
    "tf_keras",
    "tensorflow_model_optimization",
    "tasks.training.worker",
    "serving.model_server.main",
    "serving.model_server.core",
    "serving.model_server.grpc_server",
    "serving.model_server.rest",
    "serving.model_server.loading",
    "serving.model_server.manager",
    "serving.model_server.batching",
    "serving.model_server.warmup",
    "serving.model_server.request_logger",
]
MODEL_SERVER = "kiln-model-server"
CHILD_SCRIPT = Path(__file__).with_name("warm_child.py")
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(PRELOAD)


class WarmProcess:
    """The parts of subprocess.Popen that tests and `common.processes` use, for a forkserver child."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode  # negative when killed by a signal, as Popen's

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_warm(entry: str, args: list[str], env: dict[str, str] | None, log_path: Path) -> WarmProcess:
    """`module:function` called with `args` in a warm child; its return value is the exit code."""
    log_path.write_bytes(b"")
    child = {"ENTRY": entry, "ARGS": args, "ENV": dict(os.environ if env is None else env), "CWD": os.getcwd(),
             "LOG_PATH": str(log_path)}
    # The child's code is a file run by path: this package is not importable in the forkserver (pytest imports
    # it with --import-mode=importlib), and runpy.run_path, being the standard library's, is.
    process = _FORKSERVER.Process(target=runpy.run_path, args=(str(CHILD_SCRIPT), child, "__main__"),
                                  name=f"{entry} ({log_path.name})")
    process.start()
    return WarmProcess(process)


def launch_model_server(argv: list[str], env: dict[str, str] | None, log_path: Path) -> ProcessHandle:
    """`common.processes.start_server_process`'s `launch`: kiln-model-server forked warm, any other binary (the
    real tensorflow_model_server) started as usual."""
    if Path(argv[0]).name != MODEL_SERVER:
        return popen_in_own_session(argv, env, log_path)
    return fork_warm("serving.model_server.main:main", argv[1:], env, log_path)


def start_training_worker(args: list[str], env: dict[str, str], log_path: Path) -> ProcessHandle:
    """`tasks.training.launcher.start_worker_process`, forked warm. The worker's parent is the forkserver, not
    the launcher, so the launcher's pid is left out (the worker compares it with its parent's); the forkserver
    exits with this process, and the worker's parent-death signal follows."""
    env = {name: value for name, value in env.items() if name != LAUNCHER_PID_ENV}
    return fork_warm("tasks.training.worker:main", args, env, log_path)


def warm_seams() -> dict[str, Callable[..., ProcessHandle]]:
    """The product's process-start seams, by dotted path (as monkeypatch.setattr takes them), and their warm replacements."""
    return {"tasks.training.launcher.start_worker_process": start_training_worker,
            "serving.sandbox.start_sandbox_process": launch_model_server}


__all__ = ["WarmProcess", "fork_warm", "launch_model_server", "start_training_worker", "warm_seams"]
