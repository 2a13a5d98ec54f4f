"""Launch N training worker processes (MultiWorkerMirroredStrategy on loopback) and wait for all.

The launcher owns deadlines, restarts and cleanup. A missing or failed worker would leave the others
blocked in collectives, so the whole group is stopped on the first death, and started again on fresh
ports up to `max_restarts` times; a train-mode group resumes at the last finished epoch through
`BackupAndRestore` (same backup_dir), so a restart loses at most the epoch in flight. When no restart
is left, the failing worker's last log lines become the error. A worker that rejects the model (exit
code `CONTRACT_EXIT_CODE`) fails with a one-line `ModelContractError` at once: retrying cannot fix it.

Workers die with their launcher: they ask the kernel for SIGKILL when it dies (see the worker), and
SIGTERM to the launcher's process unwinds `run_workers`, so the group is stopped before the signal
takes its usual effect.

Steps do not call `run_workers` directly but `launch.launcher_for(config.train, ctx, step).run(...)`: a
`WorkerLauncher` that is this module's `LocalProcessLauncher`, or with `train.launcher: kubernetes`
the pods of `tasks.training.k8s_launcher.KubernetesLauncher` — same spec (`tasks.training.spec`), same
worker, same result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import tasks
from common import LEGACY_KERAS_ENV, storage
from common.processes import ProcessHandle, free_ports, log_tail, popen_in_own_session, stop_process_groups
from tasks.models.contract import ModelContractError
from tasks.training.devices import DevicePlan, plan_devices, visible_gpus
from tasks.training.spec import TrainSpec, WorkerSpec, write_spec

log = logging.getLogger(__name__)

PROGRESS_MARK = "kiln-train:"
CONTRACT_EXIT_CODE = 3
ERROR_TAIL_LINES = 12
POLL_SECONDS = 0.2
STOP_SECONDS = 5
LAUNCHER_PID_ENV = "KILN_LAUNCHER_PID"  # a worker whose parent is already gone exits at start
WORKERS_FILE = "workers.json"  # the current attempt's pids, for operators and fault-injection tests


class TrainError(RuntimeError):
    """Training failed or timed out; the first line says which worker and why."""


@dataclass(frozen=True)
class Recovery:
    """What it took `run_workers` to finish: group restarts, and the epochs the last start resumed from."""

    restarts: int = 0
    resumed_from_epoch: int = 0


@dataclass(frozen=True)
class WorkerDeath:
    index: int
    num_workers: int
    exit_code: int  # negative: killed by that signal (subprocess's convention)
    log_path: Path

    @property
    def how(self) -> str:
        if self.exit_code < 0:
            return f"was killed by {signal.Signals(-self.exit_code).name}"
        return f"failed with exit code {self.exit_code}"

    def error(self, restarts: int, max_restarts: int) -> TrainError:
        tried = f" after {restarts} restart(s) (train.max_restarts={max_restarts})" if max_restarts else ""
        # A worker that exits on an error ends its log with it; a killed one's last line is just the last.
        said = f": {log_tail(self.log_path, 1)[0]}" if self.exit_code > 0 else ""
        return TrainError(f"train worker {self.index} of {self.num_workers} {self.how}{tried}{said}\n"
                          f"{_tail(self.log_path)}")


class WorkerLauncher(Protocol):
    """Runs the worker group of one spec to the end: `Recovery` on success, `TrainError` (or
    `ModelContractError`) otherwise; nothing it started outlives the call."""

    def run(self, spec: WorkerSpec, num_workers: int, timeout_seconds: float,
            max_restarts: int = 0) -> Recovery: ...


@dataclass(frozen=True)
class LocalProcessLauncher:
    """N worker processes on this machine (`run_workers`); the spec and worker logs go to `work_dir`."""

    work_dir: Path

    def run(self, spec: WorkerSpec, num_workers: int, timeout_seconds: float,
            max_restarts: int = 0) -> Recovery:
        return run_workers(spec, num_workers, timeout_seconds, self.work_dir, max_restarts)


def run_workers(spec: WorkerSpec, num_workers: int, timeout_seconds: float, work_dir: Path,
                max_restarts: int = 0) -> Recovery:
    """Start `num_workers` `tasks.training.worker` processes and wait for all; restart the group when a
    worker dies, at most `max_restarts` times; raise otherwise. One deadline covers every attempt."""
    plan = plan_devices(spec.train, visible_gpus(), num_workers)
    if plan.workers != num_workers:
        log.info("train.strategy %s: %d worker over its local devices", plan.strategy, plan.workers)
    num_workers = plan.workers
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / "spec.json"
    write_spec(spec, str(spec_path))
    deadline = time.monotonic() + timeout_seconds
    restarts, resumed_from_epoch = 0, epochs_done(spec)  # > 0 when an earlier task try left a backup
    with sigterm_unwinds():
        while True:
            death = _run_group(WorkerGroup(plan, work_dir, attempt=restarts + 1), spec_path, deadline,
                               timeout_seconds)
            if death is None:
                return Recovery(restarts, resumed_from_epoch)
            if restarts == max_restarts:
                raise death.error(restarts, max_restarts)
            restarts += 1
            resumed_from_epoch = epochs_done(spec)
            log.info("train worker %d of %d %s; restart %d of %d on fresh ports, %s", death.index, num_workers,
                     death.how, restarts, max_restarts,
                     f"resuming after epoch {resumed_from_epoch}" if isinstance(spec, TrainSpec) else "starting over")


def epochs_done(spec: WorkerSpec) -> int:
    """Epochs the chief recorded as finished. It writes an epoch's line before BackupAndRestore backs
    the epoch up, so a kill between the two makes this one more than the backup holds (that epoch is
    then trained again, and its last record wins in `read_metrics`)."""
    if not isinstance(spec, TrainSpec):  # a compress group has no epochs to resume
        return 0
    history = read_metrics(spec.metrics_path)
    return history[-1]["epoch"] if history else 0


def _run_group(group: WorkerGroup, spec_path: Path, deadline: float, timeout_seconds: float) -> WorkerDeath | None:
    try:
        group.start(spec_path)
        return group.wait(deadline, timeout_seconds)
    finally:
        group.stop()


@dataclass
class WorkerGroup:
    """One attempt: N workers on fresh loopback ports, each with its own devices (`plan`) and its own log file for
    this attempt."""

    plan: DevicePlan
    work_dir: Path
    attempt: int
    procs: list[ProcessHandle] = field(default_factory=list)

    @property
    def num_workers(self) -> int:
        return self.plan.workers

    @property
    def logs(self) -> list[Path]:
        return [self.work_dir / f"worker-{i}.attempt{self.attempt}.log" for i in range(self.num_workers)]

    def start(self, spec_path: Path) -> None:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(self.num_workers)]}
        for index, log_path in enumerate(self.logs):
            env = {**_worker_env({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   **self.plan.env(index)}
            self.procs.append(start_worker_process(["--spec", str(spec_path)], env, log_path))
        (self.work_dir / WORKERS_FILE).write_text(json.dumps({"attempt": self.attempt,
                                                              "pids": [p.pid for p in self.procs]}))

    def wait(self, deadline: float, timeout_seconds: float) -> WorkerDeath | None:
        """None when every worker finished; the death that ends this attempt otherwise."""
        relayed = 0
        while True:
            relayed = _relay_progress(self.logs[0], relayed)
            codes = [p.poll() for p in self.procs]
            if CONTRACT_EXIT_CODE in codes:
                line = log_tail(self.logs[codes.index(CONTRACT_EXIT_CODE)], 1)[0]
                raise ModelContractError(line.removeprefix("train_worker: "))
            death = self._first_death(codes)
            if death:
                return death
            if all(code == 0 for code in codes):
                _relay_progress(self.logs[0], relayed)
                return None
            if time.monotonic() > deadline:
                running = [i for i, c in enumerate(codes) if c is None]
                raise TrainError(f"train workers {running} still running after the {timeout_seconds}s deadline "
                                 f"(worker_timeout_seconds); all stopped\n{_tail(self.logs[running[0]])}")
            time.sleep(POLL_SECONDS)

    def _first_death(self, codes: list[int | None]) -> WorkerDeath | None:
        # A killed worker takes its peers down with it (their collectives fail), and one poll may see
        # both: the one killed by a signal is the cause.
        dead = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if not dead:
            return None
        index = min(dead, key=lambda i: (codes[i] > 0, i))
        return WorkerDeath(index, self.num_workers, codes[index], self.logs[index])

    def stop(self) -> None:
        stop_process_groups([p.pid for p in self.procs if p.poll() is None], timeout=STOP_SECONDS)


def start_worker_process(args: list[str], env: dict[str, str], log_path: Path) -> ProcessHandle:
    """`python -m tasks.training.worker ARGS` in a session of its own, output to `log_path`. A module-level
    function so that the tests can fork workers from an already-warm Python instead (tests/warm_processes.py)."""
    return popen_in_own_session([sys.executable, "-m", "tasks.training.worker", *args], env, log_path)


def _worker_env(tf_config: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)  # CUDA_VISIBLE_DEVICES passes through unless the device plan gives a worker its own
    env["TF_CONFIG"] = json.dumps(tf_config)
    env.update(LEGACY_KERAS_ENV)
    env[LAUNCHER_PID_ENV] = str(os.getpid())
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    package_root = str(Path(tasks.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


class _Terminated(BaseException):
    """SIGTERM arrived while workers ran; a BaseException, so no `except Exception` on the way swallows it."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While workers run, SIGTERM raises instead of ending the process on the spot, so the `finally`
    that stops the group runs; afterwards the signal gets its previous effect (the default: exit;
    Airflow's task runner: the operator's on_kill). Python lets only the main thread set handlers;
    elsewhere the workers' parent-death signal is what stops them."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield
        return
    raised = False

    def raise_once(signum: int, frame: Any) -> None:
        nonlocal raised
        if not raised:  # a second SIGTERM must not interrupt the cleanup the first one started
            raised = True
            raise _Terminated

    signal.signal(signal.SIGTERM, raise_once)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)
        raise TrainError("train workers stopped: this process got SIGTERM") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Per-epoch records (a local path or any fsspec URL); a resumed run may repeat an epoch, the last
    record of an epoch wins."""
    try:
        text = storage.read_text(path)  # not fsspec.open: on object storage a cached listing may be stale
    except FileNotFoundError:
        return []
    by_epoch = {}
    for line in text.splitlines():
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
