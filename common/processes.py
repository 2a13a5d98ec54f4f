"""Local process plumbing shared by the stack, the training launcher, the InfraValidator's sandbox, tests and
benchmarks: loopback ports, starting a server and waiting until it is ready, stopping whole process groups, and
log tails for one-line errors."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

STOP_GRACE_SECONDS = 10


class ServerNotReady(RuntimeError):
    """A server exited, or was not ready in time; one line naming it, with its log's last lines."""


class ProcessHandle(Protocol):
    """What the helpers here need of a started process: subprocess.Popen has it, and so can a process forked
    from an already-warm Python (tests/warm_processes.py)."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def popen_in_own_session(argv: list[str], env: dict[str, str] | None, log_path: Path) -> subprocess.Popen[bytes]:
    """`argv` in a session of its own, stdin closed, stdout and stderr to a fresh `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def start_server_process(name: str, argv: list[str], log_path: Path, ready: Callable[[], bool], timeout: float,
                         env: dict[str, str] | None = None, interval: float = 0.2, tail_lines: int = 3,
                         launch: Callable[[list[str], dict[str, str] | None, Path], ProcessHandle]
                         = popen_in_own_session) -> ProcessHandle:
    """Start `argv` in a session of its own (output to `log_path`) and wait until `ready()`; when it exits first
    or the time is up, its whole group is stopped and ServerNotReady raised. The caller stops it
    (`stop_process_group(process.pid, ...)`, or `server_process` does)."""
    process = launch(argv, env, log_path)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                raise ServerNotReady(f"{name} exited with code {process.returncode} before it was ready: "
                                     f"{' | '.join(log_tail(log_path, tail_lines))}")
            if time.monotonic() > deadline:
                raise ServerNotReady(f"{name} was not ready after {timeout:.0f} s: "
                                     f"{' | '.join(log_tail(log_path, tail_lines))}")
            time.sleep(interval)
    except BaseException:
        stop_process_group(process.pid, STOP_GRACE_SECONDS)
        raise
    return process


@contextlib.contextmanager
def server_process(name: str, argv: list[str], log_path: Path, ready: Callable[[], bool], timeout: float,
                   env: dict[str, str] | None = None) -> Iterator[ProcessHandle]:
    """`start_server_process`, and its whole group stopped when the block ends."""
    process = start_server_process(name, argv, log_path, ready, timeout, env)
    try:
        yield process
    finally:
        stop_process_group(process.pid, STOP_GRACE_SECONDS)


def free_ports(count: int) -> list[int]:
    """Ports the OS just handed out on 127.0.0.1 (held together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def port_is_free(port: int) -> bool:
    """Whether a server could listen on the port now. SO_REUSEADDR, as servers set it: connections of a
    stack that just stopped linger in TIME_WAIT and must not count as "in use" (a second `make demo`
    right after the first would fail), while a socket still listening does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_process_groups(pids: Iterable[int], timeout: float) -> None:
    """SIGTERM each pid's whole session at once, then SIGKILL what is left after `timeout`.

    Children may outlive their leader (Airflow's task runners, mlflow's uvicorn worker), so the
    group, not the pid, is what must be gone.
    """
    groups = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.append((pid, os.getpgid(pid)))
    for _, pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while groups and time.monotonic() < deadline:
        for pid, _ in groups:
            _reap(pid)
        groups = [(pid, pgid) for pid, pgid in groups if _group_alive(pgid)]
        if groups:
            time.sleep(0.1)
    for pid, pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _reap(pid)


def stop_process_group(pid: int, timeout: float) -> None:
    stop_process_groups([pid], timeout)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(path: Path, lines: int) -> list[str]:
    """The last non-blank lines of a log, stripped; a placeholder when there is none."""
    try:
        text = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return ["(no log)"]
    return text[-lines:] or ["(empty log)"]



def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants (Linux PR_SET_CHILD_SUBREAPER), so what
    outlives its parent stays findable among this process's descendants. As a Popen preexec_fn it
    applies to the child, and the setting survives the child's exec."""
    import ctypes

    pr_set_child_subreaper = 36
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def stop_processes(processes: list, timeout: float) -> None:
    """SIGTERM psutil processes, SIGKILL what is left after `timeout`."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=timeout)


def group_members(pgid: int) -> list:
    """The live processes of process group `pgid` that run this Python (psutil), this one aside: what a
    kiln service left behind. The interpreter check keeps a group id the kernel reused, once all of the
    old group was gone, from naming someone else's processes."""
    import psutil

    python = os.path.realpath(sys.executable)
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and os.getpgid(process.pid) == pgid and process.exe() == python:
                found.append(process)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found


def recorded_groups(path: Path) -> list[int]:
    """The process group ids listed in a file, one per line (infra.stack.service_exec writes them)."""
    try:
        return [int(line) for line in path.read_text().split() if line.isdigit()]
    except FileNotFoundError:
        return []
