"""Processes of the serving benchmark: servers (started in their own session, always stopped), the load
generator, free loopback ports and resident memory of a process tree."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from common import LEGACY_KERAS_ENV, processes

HOST = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
LOAD_SCRIPT = Path(__file__).resolve().parent / "serving_load.py"


class BenchError(RuntimeError):
    """A server that would not start or a load run that failed; one line saying which and why."""


def server_env() -> dict[str, str]:
    env = {**os.environ, **LEGACY_KERAS_ENV}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH.
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    return env


@contextlib.contextmanager
def server_process(name: str, argv: list[str], log_path: Path, ready: Callable[[], bool],
                   timeout: float = 180) -> Iterator[subprocess.Popen]:
    """Start `argv` in a new session, wait until `ready()` is true, and stop the whole group on exit."""
    try:
        with processes.server_process(name, argv, log_path, ready, timeout, env=server_env()) as proc:
            yield proc
    except processes.ServerNotReady as exc:
        raise BenchError(str(exc)) from None


def http_get_ok(url: str, needle: str | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200 and (needle is None or needle in response.read().decode())
    except (OSError, urllib.error.URLError):
        return False


def http_post_json(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")[:300]}


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat:
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_rss_kib(pid: int) -> int:
    """VmRSS of `pid` plus all its descendants, in KiB."""
    return sum(process_rss_kib(member) for member in process_tree(pid))


def process_rss_kib(pid: int) -> int:
    """VmRSS of one process, in KiB (0 once it is gone)."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by `pid` and its descendants."""
    ticks = 0
    for member in process_tree(pid):
        stat = _read(f"/proc/{member}/stat")
        if stat:
            fields = stat.rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def run_load(job: dict, timeout: float) -> list[dict]:
    """Run one load job in a fresh load-generator process; one result per concurrency."""
    try:
        done = subprocess.run([sys.executable, str(LOAD_SCRIPT)], input=json.dumps(job) + "\n", text=True,
                              capture_output=True, env=server_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"load job {job['kind']} did not finish in {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise BenchError(f"load job {job['kind']} failed (exit {done.returncode}): {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def echo_server(job: dict) -> Iterator[int]:
    """A trivial fixed-answer server (REST or gRPC) in its own process; yields its port."""
    proc = subprocess.Popen([sys.executable, str(LOAD_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=server_env(), start_new_session=True)
    try:
        proc.stdin.write(json.dumps(job) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise BenchError(f"echo server {job['kind']} did not report a port (got {line!r})")
        yield int(line)
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            processes.stop_process_group(proc.pid, processes.STOP_GRACE_SECONDS)
