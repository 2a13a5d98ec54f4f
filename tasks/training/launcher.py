"""Launch N training worker processes (MultiWorkerMirroredStrategy on loopback) and wait for all.

The launcher owns deadlines and cleanup: a missing or failed worker would leave the others blocked
in collectives, so the whole group is killed on the first failure or at the deadline, and the
failing worker's last log lines become the error. A worker that rejects the model (exit code
`CONTRACT_EXIT_CODE`) fails with a one-line `ModelContractError`: retrying cannot fix it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tasks
from infra.processes import free_ports, log_tail, stop_process_groups
from tasks.models.contract import ModelContractError

log = logging.getLogger(__name__)

PROGRESS_MARK = "kiln-train:"
CONTRACT_EXIT_CODE = 3
ERROR_TAIL_LINES = 12
POLL_SECONDS = 0.2


class TrainError(RuntimeError):
    """Training failed or timed out; the first line says which worker and why."""


def run_workers(spec: dict[str, Any], num_workers: int, timeout_seconds: float, work_dir: Path) -> None:
    """Start `num_workers` `tasks.training.worker` processes and wait for all; raise otherwise."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(num_workers)]}
    logs = [work_dir / f"worker-{i}.log" for i in range(num_workers)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(num_workers):
            env = _worker_env({"cluster": cluster, "task": {"type": "worker", "index": index}})
            with logs[index].open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tasks.training.worker", "--spec", str(spec_path)],
                    env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                ))
        _wait(procs, logs, timeout_seconds)
    finally:
        stop_process_groups([p.pid for p in procs if p.poll() is None], timeout=5)


def _worker_env(tf_config: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)  # CUDA_VISIBLE_DEVICES and the like pass through untouched
    env["TF_CONFIG"] = json.dumps(tf_config)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    package_root = str(Path(tasks.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _wait(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    relayed = 0
    while True:
        relayed = _relay_progress(logs[0], relayed)
        codes = [p.poll() for p in procs]
        for index, code in enumerate(codes):
            if code == CONTRACT_EXIT_CODE:
                raise ModelContractError(log_tail(logs[index], 1)[0].removeprefix("train_worker: "))
            if code not in (None, 0):
                raise TrainError(f"train worker {index} of {len(procs)} failed with exit code {code}: "
                                 f"{log_tail(logs[index], 1)[0]}\n{_tail(logs[index])}")
        if all(code == 0 for code in codes):
            _relay_progress(logs[0], relayed)
            return
        if time.monotonic() > deadline:
            running = [i for i, c in enumerate(codes) if c is None]
            raise TrainError(f"train workers {running} still running after the {timeout_seconds}s deadline "
                             f"(worker_timeout_seconds); all stopped\n{_tail(logs[running[0]])}")
        time.sleep(POLL_SECONDS)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Per-epoch records; a resumed run may repeat an epoch, the last record of an epoch wins."""
    if not path.exists():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _relay_progress(log_path: Path, offset: int) -> int:
    """Copy the chief's progress lines into this task's log (what Airflow shows)."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return offset
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.decode(errors="replace").splitlines():
        if PROGRESS_MARK in line:
            log.info("%s", line.split(PROGRESS_MARK, 1)[1].strip())
    return offset + len(complete)


def _tail(path: Path) -> str:
    return "\n".join(f"  | {line}" for line in log_tail(path, ERROR_TAIL_LINES))
